//! How times and durations read for people: RFC 3339 in text (logs, CLI tables, the
//! console); JSON keeps Unix milliseconds everywhere.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Unix milliseconds as RFC 3339 in UTC, to the millisecond (`2026-11-21T09:30:00.123Z`).
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// How long ago (or how far ahead) `ms` is from `now_ms`: `12 s ago`, `in 3 min`.
pub fn relative(ms: i64, now_ms: i64) -> String {
    let delta = now_ms - ms;
    let span = duration(delta.unsigned_abs());
    match delta {
        d if d.abs() < 1000 => "just now".to_owned(),
        d if d > 0 => format!("{span} ago"),
        _ => format!("in {span}"),
    }
}

/// A duration in the largest unit that keeps it readable: `850 ms`, `4.2 s`, `3 min`, `2 h`, `5 d`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min", ms / 60_000),
        3_600_000..86_400_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(relative(1_000, 13_000), "12.0 s ago");
        assert_eq!(relative(200_000, 20_000), "in 3 min");
        assert_eq!(relative(5, 10), "just now");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(7_200_000), "2 h");
    }
}
