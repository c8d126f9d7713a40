//! Rule: no name holds a character that cannot be seen. Codes: `dbward::invisible_character`
//! (zero-width space or joiner, soft hyphen, byte order mark and every other
//! Default_Ignorable_Code_Point or format character) and `dbward::bidi_control` (U+202A–U+202E,
//! U+2066–U+2069, U+200E, U+200F, U+061C). Both are errors.
//!
//! **Why it matters:** `car\u{200B}ol` is displayed exactly like `carol` but is another name: a
//! second certificate subject, database user or role that a reviewer cannot tell from the first,
//! and a `deny` written with it protects nothing. A bidirectional control goes further and
//! reorders what editors, terminals and code review show around it (Trojan Source,
//! CVE-2021-42574), so the manifest a reviewer read is not the one that was compiled.
//!
//! **Example:**
//! ```kdl
//! user "car\u{200B}ol" { roles support; }   // invisible_character: ZERO WIDTH SPACE
//! db-user "app\u{202E}nimda"                // bidi_control: shown as `appadmin`
//! ```
//!
//! **How to fix:** retype the name: the message spells it out (`car<U+200B>ol`) and says which
//! character to delete. Names never need these characters.

use super::safe_names::each_name;
use crate::diag::Diagnostic;
use crate::source::{Hidden, hidden, hidden_name, spelled_out};
use crate::syntax::ast::Manifest;

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    each_name(manifest, |name, span, _, kind| {
        let Some((c, what)) = name.chars().find_map(|c| Some((c, hidden(c)?))) else {
            return;
        };
        let character = match hidden_name(c) {
            Some(known) => format!("U+{:04X} {known}", c as u32),
            None => format!("U+{:04X}", c as u32),
        };
        let (code, message, label, why) = match what {
            Hidden::Bidi => (
                "dbward::bidi_control",
                format!(
                    "{} `{}` contains the bidirectional control {character}",
                    kind.noun(),
                    spelled_out(name)
                ),
                "reorders what is displayed",
                "it makes editors and reviews show the text in another order than it is \
                 compiled in",
            ),
            Hidden::Invisible => (
                "dbward::invisible_character",
                format!(
                    "{} `{}` contains the invisible character {character}",
                    kind.noun(),
                    spelled_out(name)
                ),
                "holds a character you cannot see",
                "the name would look like another one and be a different name",
            ),
        };
        diags.push(
            Diagnostic::error(code, message)
                .label(span, label)
                .help(format!(
                    "retype the name without the characters written as <U+…> above: {why}"
                )),
        );
    });
}

#[cfg(test)]
mod tests {
    use crate::model::rules::test_support::{absent, codes, expect};

    #[test]
    fn invisible_characters_are_errors() {
        expect(
            "role r {\n}\nuser \"car\u{200B}ol\" {\n    roles r\n}\n",
            "dbward::invisible_character",
            "user `car<U+200B>ol` contains the invisible character U+200B ZERO WIDTH SPACE",
        );
        // KDL 2.0 refuses some of them written literally (U+FEFF, bidi controls): a manifest
        // can still hold them as `\u{…}` escapes, which is what these use.
        for c in ['\u{00AD}', '\u{FEFF}', '\u{200D}', '\u{2060}', '\u{E0061}'] {
            let c = format!("\\u{{{:X}}}", c as u32);
            expect(
                &format!("database d {{\n    db-user \"ap{c}p\"\n}}\n"),
                "dbward::invisible_character",
                "database user `ap<U+",
            );
        }
        // Every name the manifest writes, labels included.
        expect(
            "database d {\n    labels \"en\u{200B}v\"=prod\n}\n",
            "dbward::invisible_character",
            "label `en<U+200B>v`",
        );
        expect(
            "role \"sup\u{200C}port\" {\n}\n",
            "dbward::invisible_character",
            "role `sup<U+200C>port`",
        );
    }

    #[test]
    fn bidirectional_controls_are_errors() {
        for c in [
            '\u{202E}', '\u{202A}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            let c = format!("\\u{{{:X}}}", c as u32);
            expect(
                &format!("database d {{\n    db-user \"app{c}nimda\"\n}}\n"),
                "dbward::bidi_control",
                "bidirectional control",
            );
        }
    }

    #[test]
    fn one_error_per_name_and_none_for_visible_names() {
        // The database name is not a DNS label either, but the hidden character is the news.
        let found = codes("database \"or\u{200B}ders\" {\n}\n");
        assert_eq!(
            found
                .iter()
                .filter(|c| **c == "dbward::invisible_character" || c.contains("database_name"))
                .count(),
            1,
            "{found:?}"
        );
        absent(
            "database d {\n    db-user \"bjørn\"\n    db-user \"app\"\n}\n",
            "dbward::invisible_character",
        );
    }
}
