//! The StartupMessage `options` parameter: command-line style switches for the backend. The
//! relay reads `-c dbward.database=NAME` (how a client without SNI names the database) and
//! removes it before forwarding, keeping every other switch byte for byte.
//!
//! PostgreSQL splits `options` on whitespace, with a backslash escaping the next character
//! (`pg_split_opts`), and accepts `-c name=value`, `-cname=value` and `--name=value`.

/// The setting a client uses to name the database when it sends no SNI.
pub const DATABASE_OPTION: &str = "dbward.database";

/// The database named in `options`, and `options` without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub database: Option<String>,
    /// The remaining switches, re-joined with single spaces (escapes preserved).
    pub rest: String,
}

/// One whitespace-separated word: as written, and with escapes removed.
struct Word<'a> {
    raw: &'a str,
    value: String,
}

fn words(options: &str) -> Vec<Word<'_>> {
    let mut words = Vec::new();
    let mut chars = options.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_ascii_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            return words;
        };
        let mut end = start;
        let mut value = String::new();
        while let Some((i, c)) = chars.next_if(|(_, c)| !c.is_ascii_whitespace()) {
            end = i + c.len_utf8();
            if c == '\\' {
                if let Some((j, escaped)) = chars.next() {
                    end = j + escaped.len_utf8();
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        words.push(Word {
            raw: &options[start..end],
            value,
        });
    }
}

/// If `setting` is `dbward.database=VALUE`, the value.
fn database_setting(setting: &str) -> Option<String> {
    let (name, value) = setting.split_once('=')?;
    // `--name=value` turns dashes into underscores; neither appears in our name, but a
    // differently-cased name is a different setting, as in PostgreSQL GUC names… which are
    // case-insensitive, so compare that way.
    name.eq_ignore_ascii_case(DATABASE_OPTION)
        .then(|| value.to_owned())
}

/// `dbward.database` given more than once in `options`. PostgreSQL would take the last value
/// of a setting; the relay refuses to guess which one the client meant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{DATABASE_OPTION} is given more than once in options")]
pub struct DuplicateDatabase;

/// Finds and removes `dbward.database` from an `options` string.
pub fn split(options: &str) -> Result<Split, DuplicateDatabase> {
    let words = words(options);
    let mut database = None;
    let mut kept: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        let (setting, used) = if word.value == "-c" {
            (words.get(i + 1).map(|w| w.value.as_str()), 2)
        } else if let Some(rest) = word.value.strip_prefix("--") {
            (Some(rest), 1)
        } else if let Some(rest) = word.value.strip_prefix("-c") {
            (Some(rest), 1)
        } else {
            (None, 1)
        };
        // A lone `-c` takes the next word as its argument whatever it says, as PostgreSQL's
        // getopt does: both words are one switch, kept or removed together.
        let end = (i + used).min(words.len());
        match setting.and_then(database_setting) {
            Some(_) if database.is_some() => return Err(DuplicateDatabase),
            Some(value) => database = Some(value),
            None => kept.extend(words[i..end].iter().map(|w| w.raw)),
        }
        i = end;
    }
    Ok(Split {
        database,
        rest: kept.join(" "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(options: &str, database: Option<&str>, rest: &str) {
        let split = split(options).unwrap();
        assert_eq!(split.database.as_deref(), database, "options: {options:?}");
        assert_eq!(split.rest, rest, "options: {options:?}");
    }

    #[test]
    fn finds_and_strips_the_database() {
        check("", None, "");
        check("-c dbward.database=orders", Some("orders"), "");
        check("-cdbward.database=orders", Some("orders"), "");
        check("--dbward.database=orders", Some("orders"), "");
        check(
            "-c search_path=a\\ b  -c dbward.database=orders -c x=1",
            Some("orders"),
            "-c search_path=a\\ b -c x=1",
        );
        check("-c dbward.database=we\\ ird", Some("we ird"), "");
        check("-c statement_timeout=5", None, "-c statement_timeout=5");
        check("-c", None, "-c");
        // `-c` consumes the next word, so `-cdbward.database=y` is its argument here (a setting
        // PostgreSQL would refuse), not a switch naming a database.
        check(
            "-c -cdbward.database=y dbward.database=z",
            None,
            "-c -cdbward.database=y dbward.database=z",
        );
        check("-c x=1 -c dbward.database=a", Some("a"), "-c x=1");
        check("trailing\\", None, "trailing\\");
    }

    #[test]
    fn a_database_given_twice_is_refused() {
        for options in [
            "-c dbward.database=a -c dbward.database=b",
            "-c dbward.database=a --dbward.database=a",
            "-cdbward.database=a -c DBWARD.DATABASE=b",
        ] {
            assert_eq!(
                split(options),
                Err(DuplicateDatabase),
                "options: {options:?}"
            );
        }
    }

    /// Property: any string (whitespace, backslashes, multi-byte characters) splits without
    /// panicking, and what is kept is made of words of the input.
    #[test]
    fn random_options_never_panic() {
        let alphabet = [
            " ",
            "\\",
            "-c",
            "--",
            "=",
            "dbward.database",
            "x",
            "é",
            "\t",
            "😀",
        ];
        let mut next = crate::protocol::xorshift(0x853c_49e6_748f_ea9b);
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let Ok(split) = split(&text) else {
                continue;
            };
            for word in split.rest.split(' ').filter(|w| !w.is_empty()) {
                assert!(text.contains(word), "{word:?} is not from {text:?}");
            }
        }
    }
}
