//! Wall-clock helpers: milliseconds since the Unix epoch, FHIR instants (UTC), and
//! spans of time for people.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `ms` as a FHIR instant in UTC with milliseconds: `2024-06-01T10:20:30.123Z`.
pub fn instant(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A `--since`/`--until` value that is not a UTC date or instant.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a date: give a UTC date (2026-01-31) or instant (2026-01-31T08:30:00Z \
     or 2026-01-31T08:30:00.250Z)"
)]
pub struct InvalidBound(pub String);

/// A time bound given on the command line, checked and put in the form of the
/// instants [`instant`] writes, so that text order is time order: a date
/// `YYYY-MM-DD` stays as it is (it sorts before every instant of that day), an instant
/// `YYYY-MM-DDThh:mm:ss[.f]Z` gets exactly three fraction digits.
pub fn parse_bound(text: &str) -> Result<String, InvalidBound> {
    use time::format_description::well_known::Rfc3339;
    let invalid = || InvalidBound(text.to_string());
    let (date, clock) = match text.split_once('T') {
        Some((date, clock)) => (date, Some(clock)),
        None => (text, None),
    };
    // `[year]` alone would take 2 or 6 digits and a sign: a bound has exactly 4.
    if date.len() != 10 || !date.as_bytes()[..4].iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let Some(clock) = clock else {
        let format =
            time::format_description::parse("[year]-[month]-[day]").map_err(|_| invalid())?;
        time::Date::parse(date, &format).map_err(|_| invalid())?;
        return Ok(date.to_string());
    };
    // UTC only: an offset would have to be converted, and the log is in UTC.
    if !clock.ends_with('Z') {
        return Err(invalid());
    }
    let at = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|_| invalid())?;
    Ok(format!(
        "{date}T{:02}:{:02}:{:02}.{:03}Z",
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    ))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `24 h`, `1 h 30 min`, `90 s`, `2 days`: a span of seconds for people.
pub fn span(seconds: u64) -> String {
    const DAY: u64 = 86_400;
    if seconds >= 2 * DAY && seconds % DAY == 0 {
        return format!("{} days", seconds / DAY);
    }
    let (hours, minutes, rest) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (hours, minutes, rest) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (h, 0, 0) => format!("{h} h"),
        (h, m, 0) => format!("{h} h {m} min"),
        _ => format!("{seconds} s"),
    }
}

/// Waits before attempt `attempt + 1`: a few milliseconds, growing with the attempts,
/// plus a random part so that two devices that collided do not collide again.
pub async fn backoff(attempt: u32) {
    let jitter: u64 = rand::random::<u64>() % 40;
    tokio::time::sleep(std::time::Duration::from_millis(
        5 + jitter + 5 * u64::from(attempt.min(20)),
    ))
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(86_400), "24 h");
        assert_eq!(span(2 * 86_400), "2 days");
        assert_eq!(span(5400), "1 h 30 min");
        assert_eq!(span(120), "2 min");
        assert_eq!(span(90), "90 s");
        assert_eq!(span(0), "0 s");
    }

    #[test]
    fn instants() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(instant(1_717_237_230_123), "2024-06-01T10:20:30.123Z");
        assert!(crate::fhir::valid_instant(&instant(now_ms())));
    }

    #[test]
    fn bounds() {
        assert_eq!(
            parse_bound("2026-01-31").ok().as_deref(),
            Some("2026-01-31")
        );
        assert_eq!(
            parse_bound("2024-02-29").ok().as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(
            parse_bound("2026-01-31T08:30:00Z").ok().as_deref(),
            Some("2026-01-31T08:30:00.000Z")
        );
        assert_eq!(
            parse_bound("2026-01-31T08:30:00.25Z").ok().as_deref(),
            Some("2026-01-31T08:30:00.250Z")
        );
        // The normalized bound orders like the instants the log records.
        let bound = parse_bound("2024-06-01T10:20:30Z").unwrap_or_default();
        assert!(instant(1_717_237_230_123).as_str() >= bound.as_str());
        assert!(instant(1_717_237_229_999).as_str() < bound.as_str());
        for bad in [
            "yesterday",
            "2026-13-45",
            "2026-02-29",
            "2026-04-31",
            "2026-00-10",
            "2026-1-5",
            "26-01-01",
            "2026-01-01T25:00:00Z",
            "2026-01-01T10:00:00",
            "2026-01-01T10:00:00+02:00",
            "2026-01-01T10:00:00.Z",
            "2026-01-01T10:00Z",
            "",
        ] {
            let err = parse_bound(bad).err();
            assert!(err.is_some(), "{bad} accepted");
            assert!(
                err.is_some_and(|e| e.to_string().contains("2026-01-31T08:30:00Z")),
                "{bad}"
            );
        }
    }
}
