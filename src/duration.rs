//! Go-style duration strings (`500ms`, `1m30s`, `1.5s`, `0`), parsed by a pure function.
//!
//! NodePass takes its timeouts as Go `time.ParseDuration` strings, so edgepass reads the same
//! grammar: one or more `number unit` pairs, where the number may have a fraction and the unit
//! is one of `ns`, `us` (or `µs`, `μs`), `ms`, `s`, `m`, `h`. A bare `0` is zero. Unlike Go,
//! a sign is refused: no timeout here can be negative.

use std::time::Duration;

/// Nanoseconds per unit, longest unit names first so that `ms` is not read as `m` + `s`.
const UNITS: [(&str, u64); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),  // micro sign
    ("\u{3bc}s", 1_000), // Greek small letter mu
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("", 0),
];

/// Longest input read: far more than any sensible duration, and it bounds the work done.
const MAX_LEN: usize = 64;

/// Fraction digits kept: beyond nanosecond precision for every unit, the rest is ignored.
const MAX_FRACTION_DIGITS: u32 = 18;

/// Parses a Go-style duration such as `5s`, `1m30s`, `1.5h`, `250ms` or `0`.
///
/// ```
/// use std::time::Duration;
/// use edgepass::duration::parse_duration;
///
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
/// assert_eq!(parse_duration("5"), Err("missing unit"));
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, &'static str> {
    if s.is_empty() {
        return Err("empty duration");
    }
    if s.len() > MAX_LEN {
        return Err("duration too long");
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with(['+', '-']) {
        return Err("durations take no sign");
    }
    let mut rest = s;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let (nanos, tail) = parse_term(rest)?;
        total = total.checked_add(nanos).ok_or("duration too large")?;
        rest = tail;
    }
    Ok(Duration::from_nanos(total))
}

/// Parses one `number[.fraction]unit` term; returns its nanoseconds and the rest of the input.
fn parse_term(s: &str) -> Result<(u64, &str), &'static str> {
    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (int_digits, rest) = s.split_at(int_len);
    let (frac_digits, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let n = after.bytes().take_while(u8::is_ascii_digit).count();
            after.split_at(n)
        }
        None => ("", rest),
    };
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err("invalid duration");
    }
    let unit_len = rest
        .char_indices()
        .find(|&(_, c)| c.is_ascii_digit() || c == '.')
        .map_or(rest.len(), |(i, _)| i);
    let (unit, rest) = rest.split_at(unit_len);
    if unit.is_empty() {
        return Err("missing unit");
    }
    let per_unit = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|&(_, n)| n)
        .filter(|&n| n > 0)
        .ok_or("unknown unit")?;

    let mut whole: u64 = 0;
    for b in int_digits.bytes() {
        whole = whole
            .checked_mul(10)
            .and_then(|w| w.checked_add(u64::from(b - b'0')))
            .ok_or("duration too large")?;
    }
    let mut nanos = whole.checked_mul(per_unit).ok_or("duration too large")?;

    // The fraction, as `digits / 10^count`, scaled by the unit in u128 so nothing overflows.
    let mut frac: u128 = 0;
    let mut scale: u128 = 1;
    for b in frac_digits.bytes().take(MAX_FRACTION_DIGITS as usize) {
        frac = frac * 10 + u128::from(b - b'0');
        scale *= 10;
    }
    let frac_nanos =
        u64::try_from(frac * u128::from(per_unit) / scale).map_err(|_| "duration too large")?;
    nanos = nanos.checked_add(frac_nanos).ok_or("duration too large")?;
    Ok((nanos, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good() {
        let ms = Duration::from_millis;
        let table: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", ms(500)),
            ("5s", ms(5_000)),
            ("1m30s", ms(90_000)),
            ("2h", ms(7_200_000)),
            ("1.5s", ms(1_500)),
            (".5s", ms(500)),
            ("1.s", ms(1_000)),
            ("1h2m3s4ms", ms(3_723_004)),
            ("7ns", Duration::from_nanos(7)),
            ("3us", Duration::from_micros(3)),
            ("3\u{b5}s", Duration::from_micros(3)),
            ("3\u{3bc}s", Duration::from_micros(3)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("1.0000000000000000000009s", ms(1_000)),
            ("5m", ms(300_000)),
            ("1s1s", ms(2_000)),
        ];
        for &(input, want) in table {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad() {
        let table: &[(&str, &str)] = &[
            ("", "empty duration"),
            ("5", "missing unit"),
            ("1.5", "missing unit"),
            ("00", "missing unit"),
            ("5x", "unknown unit"),
            ("5sec", "unknown unit"),
            ("5S", "unknown unit"),
            ("s", "invalid duration"),
            (".s", "invalid duration"),
            ("-5s", "durations take no sign"),
            ("+5s", "durations take no sign"),
            ("5s ", "unknown unit"),
            (" 5s", "invalid duration"),
            ("1s.", "invalid duration"),
            ("99999999999999999999s", "duration too large"),
            ("9999999999h", "duration too large"),
            ("5000000h5000000h", "duration too large"),
            ("\u{b5}", "invalid duration"),
        ];
        for &(input, want) in table {
            assert_eq!(parse_duration(input), Err(want), "{input}");
        }
        assert_eq!(parse_duration(&"1s".repeat(40)), Err("duration too long"));
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        for s in ["1\u{b5}", "1\u{3bc}", "1é", "..", "1..5s", "ms", "1m\u{0}"] {
            let _ = parse_duration(s);
        }
    }
}
