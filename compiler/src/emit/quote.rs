//! Quoting of names and values for every language the emitters write: SQL identifiers and
//! literals, PL/pgSQL dollar quotes, `postgresql.conf` strings and `pg_hba.conf`/`pg_ident.conf`
//! tokens, and POSIX shell words.
//!
//! The front end already rejects the worst names (control characters, `"`), but the emitters
//! never rely on that alone: everything that reaches a generated file goes through one of these
//! functions, so a name with a `'`, a `;` or a keyword's spelling is written as data, never as
//! syntax.

/// A SQL identifier, always double-quoted with `"` doubled: `o'brien` -> `"o'brien"`.
///
/// Always quoting keeps case and special characters exactly as the manifest wrote them, and a
/// name such as `all` or `user` can never be read as a keyword.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A qualified SQL name, each part quoted: `"public"."orders"`.
pub fn qualified(schema: &str, object: &str) -> String {
    format!("{}.{}", ident(schema), ident(object))
}

/// A SQL string literal with `'` doubled: `o'brien` -> `'o''brien'`.
///
/// This relies on `standard_conforming_strings = on` (the default since PostgreSQL 9.1), which
/// every generated script sets explicitly, so a backslash is an ordinary character.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A dollar-quote tag (`$dbward$`, `$dbward1$`, …) that does not occur in `body`, so the body
/// of a `DO` block can never end early whatever names it contains.
pub fn dollar_tag(body: &str) -> String {
    let mut n = 0u32;
    loop {
        let tag = if n == 0 {
            "$dbward$".to_owned()
        } else {
            format!("$dbward{n}$")
        };
        if !body.contains(&tag) {
            return tag;
        }
        n += 1;
    }
}

/// A `DO` block running `body` (PL/pgSQL statements), safely dollar-quoted.
pub fn do_block(body: &str) -> String {
    let tag = dollar_tag(body);
    format!("DO {tag}\nBEGIN\n{body}END\n{tag};\n")
}

/// A `postgresql.conf` string value: single-quoted, with `'` doubled and `\` escaped, as the
/// configuration file parser expects.
pub fn conf_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A `pg_hba.conf`/`pg_ident.conf` token, double-quoted. Quoting makes keywords (`all`,
/// `sameuser`, …) and prefixes (`+group`, `@file`) literal names. These files have no escape for
/// `"` itself, so a name containing one cannot be written; [`hba_token`] returns `None` and the
/// caller reports an error (the front end rejects such names first).
pub fn hba_token(name: &str) -> Option<String> {
    if name.contains('"') || name.chars().any(char::is_control) {
        None
    } else {
        Some(format!("\"{name}\""))
    }
}

/// A POSIX shell word, single-quoted with `'` written as `'\''`: `o'brien` -> `'o'\''brien'`.
/// Inside single quotes nothing is special to the shell, so a name is always one literal word.
pub fn shell(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_quotes_double_their_delimiter() {
        assert_eq!(ident("app"), "\"app\"");
        assert_eq!(ident("x\"; DROP ROLE y; --"), "\"x\"\"; DROP ROLE y; --\"");
        assert_eq!(literal("o'brien"), "'o''brien'");
        assert_eq!(literal("a\\b"), "'a\\b'");
        assert_eq!(qualified("public", "t'1"), "\"public\".\"t'1\"");
    }

    #[test]
    fn dollar_tags_avoid_the_body() {
        assert_eq!(dollar_tag("SELECT 1;"), "$dbward$");
        assert_eq!(dollar_tag("'$dbward$'"), "$dbward1$");
        assert_eq!(dollar_tag("$dbward$ $dbward1$"), "$dbward2$");
        let block = do_block("  PERFORM '$dbward$';\n");
        assert!(block.starts_with("DO $dbward1$\n"), "{block}");
        assert!(block.ends_with("$dbward1$;\n"), "{block}");
    }

    #[test]
    fn conf_strings_escape_quote_and_backslash() {
        assert_eq!(conf_string("/etc/pg"), "'/etc/pg'");
        assert_eq!(conf_string("/it's\\x"), "'/it''s\\\\x'");
    }

    #[test]
    fn hba_tokens_are_quoted_and_refuse_double_quotes() {
        assert_eq!(hba_token("all").as_deref(), Some("\"all\""));
        assert_eq!(hba_token("o'brien").as_deref(), Some("\"o'brien\""));
        assert_eq!(hba_token("x\"y"), None);
        assert_eq!(hba_token("a\nb"), None);
    }
}
