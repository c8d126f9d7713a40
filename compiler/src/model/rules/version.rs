//! Rule `dbward::missing_version` / `dbward::unknown_version`: the manifest must declare the
//! language version this compiler speaks.
//!
//! **Why it matters:** the version is how a manifest says which language it is written in; a
//! future version may change meanings, and an old compiler must refuse rather than guess.
//!
//! **Example:**
//! ```kdl
//! dbward version=2   // unknown_version: this compiler knows version 1
//! ```
//!
//! **How to fix:** start the manifest with `dbward version=1`.

use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::{Data, Manifest};

/// The language versions this compiler understands.
pub const SUPPORTED: &[i128] = &[1];

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    let Some(node) = manifest.nodes_named("dbward").next() else {
        diags.push(
            Diagnostic::error(
                "dbward::missing_version",
                "the manifest does not declare its language version",
            )
            .label(
                Span::at(manifest.nodes.first().map_or(0, |n| n.span.start)),
                "expected `dbward version=1` before this",
            )
            .help("add `dbward version=1` as the first line"),
        );
        return;
    };
    // A missing `version=` property is reported by the vocabulary rule.
    let Some(prop) = node.prop("version") else {
        return;
    };
    match prop.value.data {
        Data::Integer(v) if SUPPORTED.contains(&v) => {}
        Data::Integer(v) => diags.push(
            Diagnostic::error(
                "dbward::unknown_version",
                format!("unknown language version {v}"),
            )
            .label(prop.value.span, "this compiler understands version 1 only")
            .help("write `dbward version=1`, or use a dbward release that knows this version"),
        ),
        // Other types are reported by the value-type rule.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::source::Source;

    fn codes(text: &str) -> Vec<&'static str> {
        crate::check(&Source::new("t.kdl", text))
            .diagnostics
            .iter()
            .map(|d| d.code)
            .collect()
    }

    #[test]
    fn missing_version() {
        assert!(
            codes("relay { listen \"0.0.0.0:1\"; public-name \"a.b\"; }\n")
                .contains(&"dbward::missing_version")
        );
    }

    #[test]
    fn unknown_version() {
        assert!(
            codes("dbward version=2\nrelay { listen \"0.0.0.0:1\"; public-name \"a.b\"; }\n")
                .contains(&"dbward::unknown_version")
        );
    }

    #[test]
    fn version_one_is_fine() {
        let codes =
            codes("dbward version=1\nrelay { listen \"0.0.0.0:1\"; public-name \"a.b\"; }\n");
        assert!(codes.is_empty(), "{codes:?}");
    }
}
