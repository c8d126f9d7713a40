//! Rule `dbward::invalid_duration`: durations are a number and a unit, like `"12h"`.
//!
//! **Why it matters:** `client-cert-ttl` decides how long a stolen laptop's certificate keeps
//! working, `idle-timeout` and `idle-in-transaction-timeout` how long a forgotten session stays
//! open; "12 hours" or "12" must not silently mean something else.
//!
//! **Example:**
//! ```kdl
//! relay { client-cert-ttl "12 hours" }   // invalid_duration
//! relay { idle-timeout "0s" }            // invalid_duration: write "off" to turn it off
//! ```
//!
//! **How to fix:** write a positive number followed by `s`, `m`, `h` or `d` (`"90s"`, `"30m"`,
//! `"12h"`, `"7d"`), or several of them (`"1h30m"`). The two idle timeouts also take `"off"`
//! (or `"0"`, as pgbouncer and PostgreSQL spell it) to turn them off; `revoke-grace` takes
//! `"0s"` to end revoked sessions at once.

use std::time::Duration;

use nom::branch::alt;
use nom::character::complete::{char, digit1};
use nom::combinator::{all_consuming, map, map_res};
use nom::multi::many1;
use nom::sequence::pair;
use nom::{IResult, Parser};

use super::walk_known;
use crate::diag::Diagnostic;
use crate::syntax::ast::Manifest;

/// The longest duration accepted: a year. Longer certificate lifetimes defeat their purpose.
const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

fn part(input: &str) -> IResult<&str, u64> {
    map(
        pair(
            map_res(digit1, str::parse::<u64>),
            alt((
                map(char('s'), |_| 1u64),
                map(char('m'), |_| 60),
                map(char('h'), |_| 3600),
                map(char('d'), |_| 86_400),
            )),
        ),
        |(n, unit)| n.saturating_mul(unit),
    )
    .parse(input)
}

/// Parses `"12h"`, `"30m"`, `"7d"`, `"90s"` or a sum like `"1h30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (_, parts) = all_consuming(many1(part))
        .parse(text)
        .map_err(|_| format!("`{text}` is not a duration"))?;
    let secs = parts.iter().fold(0u64, |a, b| a.saturating_add(*b));
    if secs == 0 {
        return Err("a duration must be longer than zero".into());
    }
    let duration = Duration::from_secs(secs);
    if duration > MAX {
        return Err(format!("`{text}` is longer than a year"));
    }
    Ok(duration)
}

/// The nodes whose value is a timeout that may be turned off.
pub const TIMEOUTS: [&str; 2] = ["relay/idle-timeout", "relay/idle-in-transaction-timeout"];

/// The nodes whose value is a grace that may be zero (`"0s"`: at once).
pub const GRACES: [&str; 1] = ["relay/revoke-grace"];

/// Parses a grace: a duration, or `"0s"` / `"0"` for none.
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    match text {
        "0s" | "0" => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

/// Parses a timeout: a duration, or `"off"` / `"0"` for none.
pub fn parse_timeout(text: &str) -> Result<Option<Duration>, String> {
    match text {
        "off" | "0" => Ok(None),
        _ => parse_duration(text).map(Some),
    }
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    walk_known(manifest, |node, spec| {
        let timeout = TIMEOUTS.contains(&spec.path);
        let grace = GRACES.contains(&spec.path);
        if spec.path != "relay/client-cert-ttl" && !timeout && !grace {
            return;
        }
        let Some(value) = node.args.first() else {
            return;
        };
        let Some(text) = value.as_str() else { return };
        let parsed = if timeout {
            parse_timeout(text).map(|_| ())
        } else if grace {
            parse_grace(text).map(|_| ())
        } else {
            parse_duration(text).map(|_| ())
        };
        if let Err(why) = parsed {
            let help = if timeout {
                "write a number and a unit: \"90s\", \"30m\", \"12h\" or \"7d\" (up to a year), \
                 or \"off\" to turn the timeout off"
            } else if grace {
                "write a number and a unit: \"90s\", \"30m\", \"12h\" or \"7d\" (up to a year), \
                 or \"0s\" to end revoked sessions at once"
            } else {
                "write a number and a unit: \"90s\", \"30m\", \"12h\" or \"7d\" (up to a year)"
            };
            diags.push(
                Diagnostic::error("dbward::invalid_duration", why)
                    .label(value.span, "not a duration")
                    .help(help),
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::test_support::PRELUDE;
    use crate::source::Source;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
    }

    #[test]
    fn rejects_words_zero_and_huge() {
        assert!(parse_duration("12 hours").is_err());
        assert!(parse_duration("12").is_err());
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("400d").is_err());
    }

    #[test]
    fn timeouts_also_take_off() {
        assert_eq!(parse_timeout("off"), Ok(None));
        assert_eq!(parse_timeout("0"), Ok(None));
        assert_eq!(parse_timeout("30m"), Ok(Some(Duration::from_secs(1_800))));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("never").is_err());
    }

    #[test]
    fn graces_also_take_zero() {
        assert_eq!(parse_grace("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_grace("off").is_err());
        assert!(parse_grace("10").is_err());
    }

    #[test]
    fn a_bad_timeout_is_reported_with_off_in_the_help() {
        let text = PRELUDE.replace(
            "public-name",
            "idle-timeout \"0s\"\n    idle-in-transaction-timeout \"off\"\n    public-name",
        );
        let diags = crate::check(&Source::new("t.kdl", text.clone())).diagnostics;
        let found: Vec<_> = diags
            .iter()
            .filter(|d| d.code == "dbward::invalid_duration")
            .collect();
        assert_eq!(found.len(), 1, "{diags:?}");
        let span = found[0].labels[0].span;
        assert_eq!(&text[span.start..span.end], "\"0s\"");
        assert!(
            found[0]
                .help
                .as_deref()
                .unwrap_or_default()
                .contains("\"off\"")
        );
    }

    #[test]
    fn reported_with_span() {
        let text = PRELUDE.replace(
            "public-name",
            "client-cert-ttl \"12 hours\"\n    public-name",
        );
        let diags = crate::check(&Source::new("t.kdl", text.clone())).diagnostics;
        let d = diags
            .iter()
            .find(|d| d.code == "dbward::invalid_duration")
            .expect("reported");
        let span = d.labels[0].span;
        assert_eq!(&text[span.start..span.end], "\"12 hours\"");
    }
}
