//! Verification instants as Unix seconds, with RFC 3339 text at the edges.
//!
//! Verification time is always an input; these helpers only convert.

use der::DateTime;

pub use crate::error::TimeError;
use std::time::Duration;

/// Format Unix seconds as RFC 3339 UTC (`2023-04-03T00:00:00Z`).
pub fn format_rfc3339(secs: u64) -> String {
    match DateTime::from_unix_duration(Duration::from_secs(secs)) {
        Ok(dt) => dt.to_string(),
        Err(_) => format!("@{secs}"),
    }
}

/// Parse RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)`) into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Result<u64, TimeError> {
    let bad = || TimeError {
        input: s.to_string(),
    };
    let b = s.trim().as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, TimeError> {
        let t = std::str::from_utf8(&b[r]).map_err(|_| bad())?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse().map_err(|_| bad())
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &rest[1 + digits..];
    }
    let offset: i64 = match rest {
        [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let d = |c: &u8| -> Result<i64, TimeError> {
                c.is_ascii_digit()
                    .then(|| i64::from(c - b'0'))
                    .ok_or_else(bad)
            };
            let v = (d(h1)? * 10 + d(h2)?) * 3600 + (d(m1)? * 10 + d(m2)?) * 60;
            if *sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return Err(bad()),
    };
    let year = u16::try_from(year).map_err(|_| bad())?;
    let to_u8 = |v: u32| u8::try_from(v).map_err(|_| bad());
    let dt = DateTime::new(
        year,
        to_u8(month)?,
        to_u8(day)?,
        to_u8(hour)?,
        to_u8(min)?,
        to_u8(sec)?,
    )
    .map_err(|_| bad())?;
    let local = i64::try_from(dt.unix_duration().as_secs()).map_err(|_| bad())?;
    u64::try_from(local - offset).map_err(|_| bad())
}

/// Current time as Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2025-12-15T19:24:08Z"), Ok(1765826648));
        assert_eq!(
            parse_rfc3339("2025-12-15T20:24:08.123+01:00"),
            Ok(1765826648)
        );
        assert_eq!(format_rfc3339(1765826648), "2025-12-15T19:24:08Z");
        for bad in [
            "",
            "2025-13-01T00:00:00Z",
            "2025-01-01",
            "2025-01-01T00:00:00",
            "x025-01-01T00:00:00Z",
        ] {
            assert_eq!(
                parse_rfc3339(bad),
                Err(TimeError { input: bad.into() }),
                "{bad}"
            );
        }
    }
}
