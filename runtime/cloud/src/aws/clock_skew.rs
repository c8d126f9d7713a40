//! The relay's clock offset from AWS, learned from the `Date` header of the AWS endpoints the
//! relay already talks to (STS, instance metadata, container credentials), as the AWS SDKs do
//! ("clock skew correction"): RDS tokens are signed with the relay's clock plus that offset, so
//! a relay whose clock is minutes off still signs tokens RDS accepts, with their full validity.
//!
//! Self-contained on purpose (one type, no I/O): the HTTP client reports each answer's `Date`
//! with [`ClockSkew::observe`], the signer asks [`ClockSkew::now`].
//!
//! The offset is the latest believable one: a `Date` that cannot be parsed, or that is more than
//! [`MAX_OFFSET`] away from the relay's clock, is ignored (a broken proxy must not move the
//! signing time by days). `Date` has one-second resolution, so the offset is known to about a
//! second, far inside the five minutes AWS allows. An offset over [`LARGE_OFFSET`] is logged once
//! per config load, with its size, as a warning to fix the relay's clock.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

/// Offsets larger than this are not believed.
pub const MAX_OFFSET: Duration = Duration::from_secs(24 * 60 * 60);
/// Offsets larger than this are worth a warning: AWS refuses signatures more than five minutes
/// off, and tokens lose validity with every minute the clock is behind.
pub const LARGE_OFFSET: Duration = Duration::from_secs(60);

/// AWS's time minus the relay's, learned from HTTP `Date` headers.
#[derive(Debug, Default)]
pub struct ClockSkew {
    /// The offset in milliseconds (positive: the relay's clock is behind).
    offset_ms: AtomicI64,
    /// Whether any believable `Date` was seen.
    learned: AtomicBool,
    /// Whether the large offset (or an unbelievable `Date`) was logged already.
    warned: AtomicBool,
}

impl ClockSkew {
    pub fn new() -> ClockSkew {
        ClockSkew::default()
    }

    /// Records the `Date` header `date` of an answer from `source` received at `received` (the
    /// relay's clock). Returns the offset it learned, if the header was believable.
    pub fn observe(&self, date: &str, received: SystemTime, source: &str) -> Option<i64> {
        let parsed = time::OffsetDateTime::parse(
            date.trim(),
            &time::format_description::well_known::Rfc2822,
        )
        .ok()?;
        let aws = SystemTime::from(parsed);
        let offset_ms = signed_ms(aws, received);
        if offset_ms.unsigned_abs() > MAX_OFFSET.as_millis() as u64 {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    source,
                    offset = %human(offset_ms),
                    "the Date of an AWS answer is more than a day away from the relay's clock; \
                     not believed, RDS tokens are signed with the relay's own clock; check the \
                     relay's clock (NTP) and any proxy in between"
                );
            }
            return None;
        }
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
        self.learned.store(true, Ordering::Relaxed);
        if offset_ms.unsigned_abs() > LARGE_OFFSET.as_millis() as u64
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                source,
                offset_seconds = offset_ms / 1000,
                "the relay's clock is {} AWS's (learned from the Date of {source}); RDS tokens \
                 are signed with the corrected time, but fix the relay's clock (NTP)",
                describe(offset_ms)
            );
        }
        Some(offset_ms)
    }

    /// The learned offset in milliseconds (AWS minus the relay), `None` before any was learned.
    pub fn offset_ms(&self) -> Option<i64> {
        self.learned
            .load(Ordering::Relaxed)
            .then(|| self.offset_ms.load(Ordering::Relaxed))
    }

    /// AWS's time now, as well as the relay knows it.
    pub fn now(&self) -> SystemTime {
        self.correct(SystemTime::now())
    }

    /// `local` (a reading of the relay's clock) in AWS's time.
    pub fn correct(&self, local: SystemTime) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let by = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 {
            local.checked_add(by).unwrap_or(local)
        } else {
            local.checked_sub(by).unwrap_or(local)
        }
    }

    /// What the relay knows about its clock, for messages: the learned offset, or that none
    /// was learned and the relay's own clock is used.
    pub fn status(&self) -> String {
        match self.offset_ms() {
            Some(offset) => format!(
                "the relay's clock is {} AWS's, learned from the Date of AWS's answers, and \
                 tokens are signed with the corrected time",
                describe(offset)
            ),
            None => "no offset from AWS's clock was learned (no AWS endpoint answered yet, e.g. \
                     credentials from environment variables), so tokens are signed with the \
                     relay's own clock, which must be within 5 minutes of the real time"
                .to_owned(),
        }
    }
}

/// `a - b` in milliseconds, saturating.
fn signed_ms(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// "10 min 0 s behind", "1.2 s ahead of", "in step with".
fn describe(offset_ms: i64) -> String {
    match offset_ms {
        0 => "in step with".to_owned(),
        o if o > 0 => format!("{} behind", human(o)),
        o => format!("{} ahead of", human(o)),
    }
}

/// The size of an offset: "10 min 0 s", "1.2 s".
fn human(offset_ms: i64) -> String {
    let ms = offset_ms.unsigned_abs();
    if ms >= 60_000 {
        format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{}.{} s", ms / 1000, ms % 1000 / 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000; // Tue, 14 Nov 2023 22:13:20 GMT

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn learns_the_offset_from_an_http_date() {
        let skew = ClockSkew::new();
        assert_eq!(skew.offset_ms(), None);
        assert_eq!(skew.correct(at(T)), at(T));
        assert!(skew.status().contains("no offset"), "{}", skew.status());
        // AWS says 22:23:20 when the relay reads 22:13:20: the relay is 10 minutes behind.
        let learned = skew.observe("Tue, 14 Nov 2023 22:23:20 GMT", at(T), "test");
        assert_eq!(learned, Some(600_000));
        assert_eq!(skew.correct(at(T)), at(T + 600));
        assert!(
            skew.status().contains("10 min 0 s behind AWS's"),
            "{}",
            skew.status()
        );
        // Ahead: the latest answer wins.
        skew.observe("Tue, 14 Nov 2023 22:13:18 GMT", at(T), "test");
        assert_eq!(skew.offset_ms(), Some(-2000));
        assert_eq!(skew.correct(at(T)), at(T - 2));
        assert!(
            skew.status().contains("2.0 s ahead of"),
            "{}",
            skew.status()
        );
    }

    #[test]
    fn unbelievable_dates_are_ignored() {
        let skew = ClockSkew::new();
        skew.observe("Tue, 14 Nov 2023 22:23:20 GMT", at(T), "test");
        for date in [
            "",
            "yesterday",
            "Tue, 14 Nov 2023 99:23:20 GMT",
            // Two days away.
            "Thu, 16 Nov 2023 22:13:20 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
        ] {
            assert_eq!(skew.observe(date, at(T), "test"), None, "{date}");
        }
        assert_eq!(skew.offset_ms(), Some(600_000));
    }
}
