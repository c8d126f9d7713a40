//! Rule `dbward::mixed_script_name` (warning): a name that mixes writing systems, such as Latin
//! letters with one Cyrillic or Greek letter — not single-script and not "highly restrictive"
//! in the sense of Unicode TR39 (section 5.2), which allows Latin only with Han, Japanese
//! kana or Korean Hangul.
//!
//! **Why it matters:** almost nobody types `pаyments` with a Cyrillic `а` on purpose: it is
//! either a paste from somewhere else or an attempt to make one name pass for another (a
//! person, database user or role a reviewer reads as someone else). Unlike the look-alike rule
//! it needs no second name to compare with, so it also catches the impostor whose original is
//! not in this manifest (a database user that exists only on the server).
//!
//! **Example:**
//! ```kdl
//! db-user "pаyments"   // mixed_script_name: Latin and Cyrillic
//! user "bjørn"         // fine: one script
//! user "山田-taro"     // fine: Latin with Han is highly restrictive
//! ```
//!
//! **How to fix:** retype the name in one script (the message spells out the characters of the
//! other script as `<U+…>`).

use std::collections::HashSet;

use unicode_security::mixed_script::AugmentedScriptSet;
use unicode_security::{MixedScript as _, RestrictionLevel, RestrictionLevelDetection as _};

use super::safe_names::each_name;
use crate::diag::Diagnostic;
use crate::source::spelled_out;
use crate::syntax::ast::Manifest;

/// Whether a name mixes scripts beyond what TR39's "highly restrictive" level allows.
pub fn mixes_scripts(name: &str) -> bool {
    if name.is_ascii() || name.is_single_script() {
        return false;
    }
    // TR39's restriction levels are defined for identifiers; the ASCII punctuation a name may
    // hold (`@`, ` `, `+`…) belongs to every script and must not make it "unrestricted".
    let letters: String = name
        .chars()
        .filter(|c| !c.is_ascii() || c.is_ascii_alphanumeric())
        .collect();
    letters.detect_restriction_level() > RestrictionLevel::HighlyRestrictive
}

/// The scripts of the letters of `name`, in the order they first appear ("Latin and Cyrillic").
fn scripts(name: &str) -> String {
    let mut seen = HashSet::new();
    let mut list = Vec::new();
    for c in name.chars() {
        let set = AugmentedScriptSet::from(c);
        if set.is_all() {
            continue;
        }
        let script = set.base.to_string();
        if seen.insert(script.clone()) {
            list.push(script);
        }
    }
    match list.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => list.concat(),
    }
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    let mut reported = HashSet::new();
    each_name(manifest, |name, span, _, kind| {
        if !mixes_scripts(name) || !reported.insert((kind, name)) {
            return;
        }
        diags.push(
            Diagnostic::warning(
                "dbward::mixed_script_name",
                format!("{} `{name}` mixes {} letters", kind.noun(), scripts(name)),
            )
            .label(span, "mixed scripts")
            .help(format!(
                "it is spelled `{}`; retype it in one script, so that it cannot pass for \
                 another name",
                spelled_out(name)
            )),
        );
    });
}

#[cfg(test)]
mod tests {
    use super::mixes_scripts;
    use crate::model::rules::test_support::{absent, expect};

    const CODE: &str = "dbward::mixed_script_name";

    #[test]
    fn mixed_scripts() {
        assert!(mixes_scripts("p\u{430}yments"));
        assert!(mixes_scripts("\u{3b1}lpha-team"));
        assert!(!mixes_scripts("payments"));
        assert!(!mixes_scripts("bjørn"));
        assert!(
            !mixes_scripts("\u{43c}\u{430}\u{448}\u{430}"),
            "all Cyrillic"
        );
        assert!(
            !mixes_scripts("山田-taro"),
            "Latin with Han is highly restrictive"
        );
        assert!(!mixes_scripts("cloudsql-user@acme-prod.iam"));
        expect(
            "database d {\n    db-user \"p\u{430}yments\"\n}\n",
            CODE,
            "database user `p\u{430}yments` mixes Latin and Cyrillic letters",
        );
        absent("database d {\n    db-user \"bjørn\"\n}\n", CODE);
    }
}
