//! Time as the stores keep it: unix milliseconds.
//!
//! Both databases store integers, which sort correctly and compare cheaply;
//! RFC 3339 text appears only at the API edge.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the unix epoch, UTC.
pub type UnixMs = i64;

/// The wall clock. Code that decides something takes `now` as an argument instead,
/// so tests can choose it.
pub fn now_ms() -> UnixMs {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as UnixMs
}

/// `2026-11-30T08:00:00.123Z`: always UTC and always three fraction digits, so
/// the strings sort like the instants they name.
pub fn to_rfc3339(ms: UnixMs) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses any RFC 3339 timestamp (any offset) into unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<UnixMs> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millisecond_precision_in_utc() {
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(to_rfc3339(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
    }

    #[test]
    fn parses_offsets_back_to_the_same_instant() {
        assert_eq!(parse_rfc3339("2021-02-25T16:02:10.123+01:00"), Some(1_614_265_330_123));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
