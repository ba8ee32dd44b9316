//! FHIR dates as ranges. A date, dateTime or instant — in a resource or in a search
//! value — denotes every instant within its precision, as a half-open range of
//! milliseconds since the Unix epoch: `2021` is [2021-01-01T00:00Z, 2022-01-01T00:00Z),
//! `2021-03-04T10:00:00+01:00` is one second from 09:00:00Z, `…:00.5Z` is 100 ms.
//! Digits beyond milliseconds are dropped. A value without a time zone (dates, and the
//! lenient `hh:mm[:ss]` without offset) is taken as UTC: the device has no "server time
//! zone" worth depending on, and UTC keeps results the same on every device. A Period
//! runs from its start's low bound to its end's high bound (open on a missing side); a
//! Timing spans its events and `repeat.boundsPeriod` (the outer limits, as the spec says).
//! Calendar arithmetic and validation (days per month, leap years) use the `time` crate.

use time::{Date, Month};

/// Milliseconds per day.
const DAY_MS: i64 = 86_400_000;
/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// A half-open range `[lo, hi)` of milliseconds since the Unix epoch; `i64::MIN` /
/// `i64::MAX` stand for an open end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    /// First instant in the range.
    pub lo: i64,
    /// First instant after the range.
    pub hi: i64,
}

/// Parses a FHIR date / dateTime / instant (or a date search value without its prefix)
/// into the range it denotes. The error says what is wrong.
pub fn parse(s: &str) -> Result<DateRange, String> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>, what: &str| -> Result<u32, String> {
        let part = b
            .get(range)
            .filter(|p| p.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| format!("expected {what}"))?;
        Ok(part
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
    };
    let expect = |i: usize, c: u8| -> Result<(), String> {
        if b.get(i) == Some(&c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at position {}", c as char, i + 1))
        }
    };
    let year = num(0..4, "a four-digit year")? as i32;
    if b.len() == 4 {
        let lo = day_start(year, 1, 1)?;
        return Ok(DateRange {
            lo,
            hi: day_start(year, 12, 31)? + DAY_MS,
        });
    }
    expect(4, b'-')?;
    let month = num(5..7, "a two-digit month")? as u8;
    let month_enum = Month::try_from(month).map_err(|_| format!("month {month} out of range"))?;
    if b.len() == 7 {
        let last = month_enum.length(year);
        return Ok(DateRange {
            lo: day_start(year, month, 1)?,
            hi: day_start(year, month, last)? + DAY_MS,
        });
    }
    expect(7, b'-')?;
    let day = num(8..10, "a two-digit day")? as u8;
    let midnight = day_start(year, month, day)?;
    if b.len() == 10 {
        return Ok(DateRange {
            lo: midnight,
            hi: midnight + DAY_MS,
        });
    }
    expect(10, b'T')?;
    let hour = num(11..13, "a two-digit hour")?;
    expect(13, b':')?;
    let minute = num(14..16, "two-digit minutes")?;
    if hour > 23 || minute > 59 {
        return Err(format!("time {hour:02}:{minute:02} out of range"));
    }
    let mut i = 16;
    let mut precision_ms = 60_000;
    let mut second = 0;
    let mut fraction_ms = 0;
    if b.get(i) == Some(&b':') {
        second = num(17..19, "two-digit seconds")?;
        if second > 60 {
            return Err(format!("second {second} out of range"));
        }
        // A leap second is folded into the last second of the minute.
        second = second.min(59);
        precision_ms = 1000;
        i = 19;
        if b.get(i) == Some(&b'.') {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err("expected digits after '.'".into());
            }
            let kept = digits.min(3);
            let value = num(i + 1..i + 1 + kept, "fraction digits")?;
            fraction_ms = i64::from(value) * 10i64.pow(3 - kept as u32);
            precision_ms = 10i64.pow(3 - kept as u32);
            i += 1 + digits;
        }
    }
    let offset_ms: i64 = match b.get(i) {
        None => 0,
        Some(b'Z') if b.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 => {
            let oh = num(i + 1..i + 3, "a two-digit offset hour")?;
            expect(i + 3, b':')?;
            let om = num(i + 4..i + 6, "two-digit offset minutes")?;
            if oh > 14 || om > 59 {
                return Err(format!("time zone offset {oh:02}:{om:02} out of range"));
            }
            let magnitude = i64::from(oh * 60 + om) * 60_000;
            if *sign == b'-' { -magnitude } else { magnitude }
        }
        _ => return Err("expected 'Z' or a '+hh:mm' / '-hh:mm' time zone".into()),
    };
    let lo = midnight
        + i64::from(hour) * 3_600_000
        + i64::from(minute) * 60_000
        + i64::from(second) * 1000
        + fraction_ms
        - offset_ms;
    Ok(DateRange {
        lo,
        hi: lo + precision_ms,
    })
}

/// Milliseconds since the epoch at 00:00 UTC of the given (validated) calendar day.
fn day_start(year: i32, month: u8, day: u8) -> Result<i64, String> {
    let month_enum = Month::try_from(month).map_err(|_| format!("month {month} out of range"))?;
    let date = Date::from_calendar_date(year, month_enum, day)
        .map_err(|_| format!("{year:04}-{month:02}-{day:02} is not a calendar date"))?;
    Ok((i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY) * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        parse(s).expect("valid").lo
    }

    #[test]
    fn partial_dates_are_ranges() {
        let y = parse("2021").expect("year");
        assert_eq!(y.lo, 1_609_459_200_000);
        assert_eq!(y.hi, ms("2022-01-01"));
        let m = parse("2020-02").expect("month");
        assert_eq!(m.hi - m.lo, 29 * DAY_MS, "leap February");
        let d = parse("2021-03-04").expect("day");
        assert_eq!(d.hi - d.lo, DAY_MS);
        assert_eq!(parse("1970-01-01").expect("epoch").lo, 0);
        assert!(parse("1900-06-15").expect("old").lo < 0);
    }

    #[test]
    fn datetimes_with_zones_and_precision() {
        let a = parse("2021-03-04T10:00:00+01:00").expect("offset");
        assert_eq!(a.lo, ms("2021-03-04T09:00:00Z"));
        assert_eq!(a.hi - a.lo, 1000);
        let b = parse("2021-03-04T09:00:00.5Z").expect("fraction");
        assert_eq!(b.lo - ms("2021-03-04T09:00:00Z"), 500);
        assert_eq!(b.hi - b.lo, 100);
        let c = parse("2001-12-20T11:52:38.886514+00:00").expect("micros");
        assert_eq!(c.hi - c.lo, 1);
        assert_eq!(c.lo % 1000, 886);
        let d = parse("2021-03-04T23:30-05:00").expect("minutes");
        assert_eq!(d.lo, ms("2021-03-05T04:30:00Z"));
        assert_eq!(d.hi - d.lo, 60_000);
        assert_eq!(ms("2021-03-04T10:00:00"), ms("2021-03-04T10:00:00Z"));
        assert_eq!(ms("2016-12-31T23:59:60Z"), ms("2016-12-31T23:59:59Z"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "21",
            "2021-13",
            "2021-02-30",
            "2021-1-01",
            "2021-01-01T25:00:00Z",
            "2021-01-01T10:00:00+15:00",
            "2021-01-01T10:00:00X",
            "2021-01-01 10:00",
            "2021-01-01T10:00:00.Z",
            "abcd",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
