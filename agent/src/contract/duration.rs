//! Durations as users write them in annotations: `30s`, `5m`, `1h`, `1h30m`, `250ms`,
//! or a bare number of seconds (`90`), the forms Vault and Kubernetes accept.

use std::time::Duration;

/// Why a duration string was refused. The caller adds which annotation it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The string is empty or only whitespace.
    #[error("empty duration")]
    Empty,
    /// A character that is neither a digit nor part of a unit.
    #[error("{0:?} is not a duration (use forms such as 30s, 5m, 1h30m)")]
    Malformed(String),
    /// A unit other than ms, s, m, h, d.
    #[error("unknown unit {unit:?} in {input:?} (use ms, s, m, h or d)")]
    UnknownUnit { input: String, unit: String },
    /// The value does not fit in a `Duration`.
    #[error("{0:?} is too large")]
    Overflow(String),
}

/// Parses a duration. Longest accepted input is 64 bytes, which is more than any
/// real duration needs and keeps hostile input cheap.
pub fn parse(input: &str) -> Result<Duration, Error> {
    let s = input.trim();
    if s.is_empty() {
        return Err(Error::Empty);
    }
    if s.len() > 64 {
        return Err(Error::Malformed(s.chars().take(64).collect()));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        // Bounded like `<n>s`, so that every accepted duration formats back to a
        // string this parser accepts.
        let secs: u64 = s
            .parse()
            .ok()
            .filter(|secs: &u64| secs.checked_mul(1_000).is_some())
            .ok_or_else(|| Error::Overflow(s.to_owned()))?;
        return Ok(Duration::from_secs(secs));
    }

    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(Error::Malformed(s.to_owned()));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| Error::Overflow(s.to_owned()))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(Error::Malformed(s.to_owned()));
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(Error::UnknownUnit {
                    input: s.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        total_ms = value
            .checked_mul(ms_per_unit)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| Error::Overflow(s.to_owned()))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse`] reads it back (whole seconds).
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) && secs > 0 {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) && secs > 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_and_sums_compound_forms() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse(" 90 "), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        assert_eq!(parse(""), Err(Error::Empty));
        assert!(matches!(parse("5 m"), Err(Error::Malformed(_))));
        assert!(matches!(parse("m5"), Err(Error::Malformed(_))));
        assert!(matches!(parse("-5s"), Err(Error::Malformed(_))));
        assert!(matches!(parse("5y"), Err(Error::UnknownUnit { .. })));
        assert!(matches!(
            parse("99999999999999999999s"),
            Err(Error::Overflow(_))
        ));
        assert!(matches!(parse("999999999999999h"), Err(Error::Overflow(_))));
    }

    #[test]
    fn a_bare_number_of_seconds_is_bounded_like_its_unit_form() {
        // Found by the `duration` fuzz target: "51111051511110514" was accepted and
        // formatted to "51111051511110514s", which was then refused as too large.
        let bare = "51111051511110514";
        assert!(matches!(parse(bare), Err(Error::Overflow(_))));
        assert!(matches!(
            parse(&format!("{bare}s")),
            Err(Error::Overflow(_))
        ));
        let largest = u64::MAX / 1_000;
        let d = parse(&largest.to_string()).expect("the largest bare number");
        assert_eq!(parse(&format(d)), Ok(d));
    }

    #[test]
    fn format_round_trips() {
        for s in ["45s", "5m", "2h", "0s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
