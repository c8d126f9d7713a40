//! Rule `dbward::wrong_type` / `dbward::unknown_value`: every value has the type its place
//! expects, and enumerated values (privileges, `on=` kinds, provisioning modes) are known.
//!
//! **Why it matters:** `port="5432"` or `queries="yes"` look right to a reader, but a manifest
//! that guesses conversions hides mistakes; `SELEC` must not be silently dropped from a GRANT.
//!
//! **Example:**
//! ```kdl
//! postgres port="5432"          // wrong_type: write port=5432
//! grant SELEC on=all-tables     // unknown_value: did you mean `SELECT`?
//! ```
//!
//! **How to fix:** write integers without quotes, booleans as `#true`/`#false`, names as strings,
//! and pick enumerated values from the list the help shows.

use super::{suggestion, walk_known};
use crate::diag::Diagnostic;
use crate::syntax::ValueKind;
use crate::syntax::ast::{Data, Value};

pub fn check(manifest: &crate::syntax::ast::Manifest, diags: &mut Vec<Diagnostic>) {
    walk_known(manifest, |node, spec| {
        if let Some(args) = spec.args {
            for value in &node.args {
                check_value(
                    value,
                    args.kind,
                    &|| format!("`{}` takes {}", spec.name(), args.what),
                    None,
                    diags,
                );
            }
        }
        for prop in &node.props {
            let kind = spec
                .prop(&prop.name.text)
                .map(|p| p.kind)
                .or(spec.any_props);
            if let Some(kind) = kind {
                let what = || format!("`{}=` on `{}`", prop.name.text, spec.name());
                check_value(&prop.value, kind, &what, Some(&prop.name.text), diags);
            }
        }
    });
}

fn check_value(
    value: &Value,
    kind: ValueKind,
    what: &dyn Fn() -> String,
    key: Option<&str>,
    diags: &mut Vec<Diagnostic>,
) {
    let write = |v: String| match key {
        Some(k) => format!("{k}={v}"),
        None => v,
    };
    let wrong = |expected: &str, help: String| {
        Diagnostic::error(
            "dbward::wrong_type",
            format!(
                "{} must be {expected}, not {}",
                what(),
                value.data.type_name()
            ),
        )
        .label(value.span, format!("expected {expected}"))
        .help(help)
    };
    match (kind, &value.data) {
        (
            ValueKind::String | ValueKind::OneOf(_),
            Data::Integer(_) | Data::Float(_) | Data::Bool(_) | Data::Null,
        ) => {
            let shown = match &value.data {
                Data::Integer(i) => i.to_string(),
                Data::Float(f) => f.to_string(),
                Data::Bool(b) => format!("#{b}"),
                _ => "#null".into(),
            };
            diags.push(wrong(
                "a string",
                format!(
                    "quote it: `{}`",
                    write(format!("\"{}\"", shown.trim_start_matches('#')))
                ),
            ));
        }
        (ValueKind::OneOf(options), Data::String(s)) => {
            if !options.contains(&s.as_str()) {
                let hint = suggestion(s, options.iter().copied());
                let help = if hint.is_empty() {
                    format!("expected one of: {}", options.join(", "))
                } else {
                    format!("{hint} (expected one of: {})", options.join(", "))
                };
                diags.push(
                    Diagnostic::error(
                        "dbward::unknown_value",
                        format!("unknown value `{s}` for {}", what()),
                    )
                    .label(value.span, "not a known value")
                    .help(help),
                );
            }
        }
        (ValueKind::Integer, Data::Integer(_))
        | (ValueKind::Bool, Data::Bool(_))
        | (ValueKind::String, Data::String(_)) => {}
        (ValueKind::Integer, Data::String(s)) if s.trim().parse::<i128>().is_ok() => {
            diags.push(wrong(
                "an integer",
                format!("write it without quotes: `{}`", write(s.trim().to_string())),
            ));
        }
        (ValueKind::Integer, _) => diags.push(wrong(
            "an integer",
            format!("write a whole number, like `{}`", write("5432".into())),
        )),
        (ValueKind::Bool, Data::String(s))
            if matches!(s.as_str(), "true" | "false" | "yes" | "no") =>
        {
            let b = matches!(s.as_str(), "true" | "yes");
            diags.push(wrong(
                "a boolean",
                format!("write `{}`", write(format!("#{b}"))),
            ));
        }
        (ValueKind::Bool, _) => diags.push(wrong(
            "a boolean",
            format!(
                "write `{}` or `{}`",
                write("#true".into()),
                write("#false".into())
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{diags, expect};

    #[test]
    fn quoted_integer() {
        let all = diags("database orders {\n    postgres port=\"5432\"\n}\n");
        let d = all
            .iter()
            .find(|d| d.code == "dbward::wrong_type")
            .expect("reported");
        assert!(
            d.help.as_deref().unwrap_or("").contains("port=5432"),
            "{d:?}"
        );
    }

    #[test]
    fn unknown_privilege_suggests() {
        let all = diags(
            "database orders {\n    db-role r {\n        grant SELEC on=all-tables schema=public\n    }\n}\n",
        );
        let d = all
            .iter()
            .find(|d| d.code == "dbward::unknown_value")
            .expect("reported");
        assert!(
            d.help.as_deref().unwrap_or("").contains("`SELECT`"),
            "{d:?}"
        );
    }

    #[test]
    fn other_types() {
        expect(
            "relay {\n    audit \"/a\" queries=\"true\"\n}\n",
            "dbward::wrong_type",
            "must be a boolean",
        );
        expect(
            "database 12 {\n}\n",
            "dbward::wrong_type",
            "must be a string",
        );
        expect(
            "role r {\n    provision kep\n}\n",
            "dbward::unknown_value",
            "`kep`",
        );
        expect("dbward version=\"1\"\n", "dbward::wrong_type", "an integer");
    }
}
