//! Kubernetes resource quantities (`100m`, `64Mi`, `1G`, `1.5`, `2e3`), just enough to
//! check an annotation's value and compare two of them before they reach the API
//! server, which would otherwise refuse the whole pod with a message about a container
//! the user never wrote.
//!
//! Accepted: an unsigned decimal number (`1`, `0.5`, `.5`), then at most one suffix:
//! binary `Ki Mi Gi Ti Pi Ei`, decimal `n u m k M G T P E`, or an exponent `e3`/`E-2`.
//! Negative quantities are refused: no resource annotation takes one.

/// Why a quantity was refused. The caller adds which annotation it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a number followed by a known suffix.
    #[error("{0:?} is not a Kubernetes quantity (use forms such as 100m, 0.5, 64Mi, 1G)")]
    Malformed(String),
    /// So large that it cannot be a resource of a pod.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// A parsed quantity: its text as written (trimmed) and its value in thousandths of
/// the base unit (millicores for CPU, millibytes for memory), rounded up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    /// The text to put into the pod, trimmed.
    pub text: String,
    /// Value × 1000, rounded up to an integer.
    pub milli: u128,
}

/// Longest accepted input; real quantities are a handful of characters.
const MAX_LEN: usize = 32;

/// Parses a quantity.
pub fn parse(input: &str) -> Result<Quantity, Error> {
    let s = input.trim();
    let malformed = || Error::Malformed(s.chars().take(MAX_LEN).collect());
    if s.is_empty() || s.len() > MAX_LEN {
        return Err(malformed());
    }
    let number_len = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = s.split_at(number_len);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(malformed());
    }

    // (numerator, denominator) of the suffix's multiplier, times 1000 for milli-units.
    let (mul, div): (u128, u128) = match suffix {
        "" => (1000, 1),
        "n" => (1, 1_000_000),
        "u" => (1, 1000),
        "m" => (1, 1),
        "k" => (1000 * 10u128.pow(3), 1),
        "M" => (1000 * 10u128.pow(6), 1),
        "G" => (1000 * 10u128.pow(9), 1),
        "T" => (1000 * 10u128.pow(12), 1),
        "P" => (1000 * 10u128.pow(15), 1),
        "E" => (1000 * 10u128.pow(18), 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| malformed())?;
            if !(-9..=18).contains(&e) {
                return Err(Error::TooLarge(s.to_owned()));
            }
            if e >= -3 {
                (10u128.pow((e + 3).unsigned_abs()), 1)
            } else {
                (1, 10u128.pow((-e - 3).unsigned_abs()))
            }
        }
        _ => return Err(malformed()),
    };

    // number = digits / 10^frac_len, all in integers.
    let digits: String = format!("{int_part}{frac_part}");
    if digits.len() > 24 {
        return Err(Error::TooLarge(s.to_owned()));
    }
    let digits: u128 = digits.parse().map_err(|_| malformed())?;
    let scale = 10u128.pow(u32::try_from(frac_part.len()).map_err(|_| malformed())?);
    let numerator = digits
        .checked_mul(mul)
        .ok_or_else(|| Error::TooLarge(s.to_owned()))?;
    let denominator = scale * div;
    Ok(Quantity {
        text: s.to_owned(),
        milli: numerator.div_ceil(denominator),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> u128 {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).milli
    }

    #[test]
    fn reads_plain_decimal_binary_and_exponent_forms() {
        assert_eq!(milli("1"), 1000);
        assert_eq!(milli("0.5"), 500);
        assert_eq!(milli(".5"), 500);
        assert_eq!(milli("250m"), 250);
        assert_eq!(milli("1k"), 1_000_000);
        assert_eq!(milli("1M"), 1_000_000_000);
        assert_eq!(milli("64Mi"), 64 * 1024 * 1024 * 1000);
        assert_eq!(milli("1.5Gi"), 3 * 512 * 1024 * 1024 * 1000);
        assert_eq!(milli("2e3"), 2_000_000);
        assert_eq!(milli("1E-3"), 1);
        assert_eq!(milli("1n"), 1, "rounded up to a thousandth");
        assert_eq!(parse(" 16Mi ").unwrap().text, "16Mi");
    }

    #[test]
    fn refuses_what_kubernetes_refuses() {
        for bad in [
            "",
            "-1",
            "1.2.3",
            "Mi",
            "1mi",
            "1 Mi",
            "1KiB",
            "x",
            "1e",
            "1e99",
            ".",
            "1..",
            "99999999999999999999999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
