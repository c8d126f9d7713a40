//! Rule `dbward::invalid_timestamp`: `certificates-issued-after` is an RFC 3339 time with its
//! offset, like `"2026-11-30T12:00:00Z"`.
//!
//! **Why it matters:** the cutoff locks out every certificate issued before it, so a stolen
//! laptop's certificate stops working while the person keeps their access with a new one. A
//! time without an offset ("12:00" where?) or a date alone would lock out a different set of
//! certificates than the operator meant, or none.
//!
//! **Example:**
//! ```kdl
//! user alice { certificates-issued-after "2026-11-30 12:00" }   // invalid_timestamp
//! relay { certificates-issued-after "yesterday" }              // invalid_timestamp
//! ```
//!
//! **How to fix:** write the date, `T`, the time with seconds and the offset:
//! `"2026-11-30T12:00:00Z"` (UTC) or `"2026-11-30T13:00:00+01:00"`. Pick the moment the
//! certificate was lost: certificates `dbward cert issue` signs after it keep working.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::walk_known;
use crate::diag::Diagnostic;
use crate::syntax::ast::Manifest;

/// The nodes whose value is a certificate cutoff.
pub const CUTOFFS: [&str; 2] = [
    "relay/certificates-issued-after",
    "user/certificates-issued-after",
];

/// Parses a cutoff into seconds since the Unix epoch (fractions of a second are dropped).
pub fn parse_cutoff(text: &str) -> Result<i64, String> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| format!("`{text}` is not an RFC 3339 time"))?;
    Ok(parsed.unix_timestamp())
}

pub fn check(manifest: &Manifest, diags: &mut Vec<Diagnostic>) {
    walk_known(manifest, |node, spec| {
        if !CUTOFFS.contains(&spec.path) {
            return;
        }
        let Some(value) = node.args.first() else {
            return;
        };
        let Some(text) = value.as_str() else { return };
        if let Err(why) = parse_cutoff(text) {
            diags.push(
                Diagnostic::error("dbward::invalid_timestamp", why)
                    .label(value.span, "not an RFC 3339 time")
                    .help(
                        "write the date, `T`, the time with seconds and the offset: \
                         \"2026-11-30T12:00:00Z\" or \"2026-11-30T13:00:00+01:00\"",
                    ),
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
    fn parses_utc_and_offsets() {
        assert_eq!(parse_cutoff("2026-11-30T12:00:00Z"), Ok(1_796_040_000));
        assert_eq!(parse_cutoff("2026-11-30T13:00:00+01:00"), Ok(1_796_040_000));
        assert_eq!(parse_cutoff("2026-11-30T12:00:00.5Z"), Ok(1_796_040_000));
    }

    #[test]
    fn rejects_times_without_offset_dates_and_words() {
        for text in [
            "2026-11-30 12:00",
            "2026-11-30T12:00:00",
            "2026-11-30",
            "yesterday",
            "",
        ] {
            assert!(parse_cutoff(text).is_err(), "{text}");
        }
    }

    #[test]
    fn reported_with_span_for_a_person_and_for_everyone() {
        let text = format!(
            "{}\nuser alice {{\n    roles reader\n    certificates-issued-after \"2026-11-30 \
             12:00\"\n}}\n",
            PRELUDE.replace(
                "public-name",
                "certificates-issued-after \"now\"\n    public-name"
            )
        );
        let diags = crate::check(&Source::new("t.kdl", text.clone())).diagnostics;
        let found: Vec<_> = diags
            .iter()
            .filter(|d| d.code == "dbward::invalid_timestamp")
            .map(|d| &text[d.labels[0].span.start..d.labels[0].span.end])
            .collect();
        assert_eq!(found, ["\"now\"", "\"2026-11-30 12:00\""], "{diags:?}");
    }
}
