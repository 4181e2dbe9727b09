//! The validity dates of an X.509 certificate: a minimal DER walk, pure, with no clock.
//!
//! Nothing in our dependency tree exposes a certificate's `notBefore`/`notAfter`, and we need
//! them to refuse an expired certificate at start with its dates in the message. The walk
//! reads `Certificate -> tbsCertificate -> validity` and nothing else (RFC 5280 §4.1).

/// `notBefore` and `notAfter`, in seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First second the certificate is valid.
    pub not_before: i64,
    /// Last second the certificate is valid.
    pub not_after: i64,
}

impl Validity {
    /// Whether `now` (Unix seconds) lies inside the validity period.
    pub fn contains(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// DER tags we meet on the way.
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const EXPLICIT_0: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Split one TLV off the front: `(tag, value, rest)`. Lengths up to 4 bytes (4 GiB) are
/// enough for any certificate; longer or indefinite forms are refused.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | x as usize;
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// Take one TLV with the expected tag, returning its value and the rest.
fn expect(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, v, rest) = tlv(b)?;
    (t == tag).then_some((v, rest))
}

/// The validity period of a DER certificate, or `None` if the bytes are not a certificate.
pub fn validity(der: &[u8]) -> Option<Validity> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    // version [0] EXPLICIT, absent in v1 certificates.
    let tbs = match tlv(tbs)? {
        (EXPLICIT_0, _, rest) => rest,
        _ => tbs,
    };
    let (_serial, tbs) = expect(tbs, INTEGER)?;
    let (_sig_alg, tbs) = expect(tbs, SEQUENCE)?;
    let (_issuer, tbs) = expect(tbs, SEQUENCE)?;
    let (val, _) = expect(tbs, SEQUENCE)?;
    let (t1, v1, rest) = tlv(val)?;
    let (t2, v2, _) = tlv(rest)?;
    Some(Validity {
        not_before: time(t1, v1)?,
        not_after: time(t2, v2)?,
    })
}

/// A DER `UTCTime` (`YYMMDDHHMMSSZ`) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let (year, rest) = match (tag, v.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&v[..2])?;
            // RFC 5280: 50..99 means 19YY, 00..49 means 20YY.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &v[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&v[..4])?, &v[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let (mo, d) = (digits(&rest[0..2])?, digits(&rest[2..4])?);
    let (h, mi, s) = (
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as i64)
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: `(year, month, day)`.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`, for messages.
pub fn format_utc(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(tag: u8, v: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if v.len() < 0x80 {
            out.push(v.len() as u8);
        } else {
            out.extend([0x82, (v.len() >> 8) as u8, v.len() as u8]);
        }
        out.extend_from_slice(v);
        out
    }

    /// A certificate skeleton: only what the walk looks at is meaningful.
    fn cert(version: bool, nb: (u8, &str), na: (u8, &str)) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(wrap(EXPLICIT_0, &wrap(INTEGER, &[2])));
        }
        tbs.extend(wrap(INTEGER, &[1, 2, 3]));
        tbs.extend(wrap(SEQUENCE, &[0x06, 0x01, 0x2a]));
        tbs.extend(wrap(SEQUENCE, &[0u8; 200])); // a long issuer: two-byte length
        let mut val = wrap(nb.0, nb.1.as_bytes());
        val.extend(wrap(na.0, na.1.as_bytes()));
        tbs.extend(wrap(SEQUENCE, &val));
        tbs.extend(wrap(SEQUENCE, &[])); // subject
        let mut c = wrap(SEQUENCE, &tbs);
        c.extend(wrap(SEQUENCE, &[])); // signature algorithm
        c.extend(wrap(0x03, &[0])); // signature
        wrap(SEQUENCE, &c)
    }

    #[test]
    fn reads_both_time_forms() {
        let c = cert(
            true,
            (UTC_TIME, "200101000000Z"),
            (GENERALIZED_TIME, "20501231235959Z"),
        );
        let v = validity(&c).unwrap();
        assert_eq!(v.not_before, 1_577_836_800);
        assert_eq!(format_utc(v.not_before), "2020-01-01 00:00:00 UTC");
        assert_eq!(format_utc(v.not_after), "2050-12-31 23:59:59 UTC");
        assert!(v.contains(1_700_000_000));
        assert!(!v.contains(1_500_000_000));
        assert!(!v.contains(v.not_after + 1));
        // v1 certificates have no version field; UTCTime 99 is 1999.
        let c = cert(
            false,
            (UTC_TIME, "990301120000Z"),
            (UTC_TIME, "490101000000Z"),
        );
        let v = validity(&c).unwrap();
        assert_eq!(format_utc(v.not_before), "1999-03-01 12:00:00 UTC");
        assert_eq!(format_utc(v.not_after), "2049-01-01 00:00:00 UTC");
    }

    #[test]
    fn refuses_bad_times() {
        for bad in [
            "2001010000Z",
            "200101000000+",
            "201301000000Z",
            "2001a1000000Z",
        ] {
            let c = cert(true, (UTC_TIME, bad), (UTC_TIME, "300101000000Z"));
            assert_eq!(validity(&c), None, "{bad}");
        }
        let c = cert(true, (0x04, "200101000000Z"), (UTC_TIME, "300101000000Z"));
        assert_eq!(validity(&c), None);
    }

    #[test]
    fn every_truncation_is_refused() {
        let c = cert(
            true,
            (UTC_TIME, "200101000000Z"),
            (UTC_TIME, "300101000000Z"),
        );
        assert!(validity(&c).is_some());
        for n in 0..c.len() {
            assert_eq!(validity(&c[..n]), None, "prefix of {n} bytes");
        }
        assert_eq!(validity(&[0x30, 0x80]), None, "indefinite length");
        assert_eq!(
            validity(&[0x30, 0x85, 1, 1, 1, 1, 1]),
            None,
            "5-byte length"
        );
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_468, -1, 0, 1, 11_016, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn reads_an_rcgen_certificate() {
        let mut p = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2021, 5, 6);
        p.not_after = rcgen::date_time_ymd(2031, 7, 8);
        let kp = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&kp).unwrap();
        let v = validity(c.der()).unwrap();
        assert_eq!(format_utc(v.not_before), "2021-05-06 00:00:00 UTC");
        assert_eq!(format_utc(v.not_after), "2031-07-08 00:00:00 UTC");
    }
}
