//! Fuzzes the certificate validity reader (`tls::x509::validity`), which reads the `crt=` file
//! of `tls=2` at start and on every reload: no panic on any bytes, and dates it returns
//! format for messages and compare in order.
#![no_main]

use edgepass::tls::x509::{format_utc, validity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(v) = validity(data) {
        for t in [v.not_before, v.not_after] {
            let s = format_utc(t);
            assert!(s.ends_with(" UTC") && s.len() >= 23, "{s}");
            // Years 0000-9999 only: UTCTime is 1950-2049, GeneralizedTime has 4 digits.
            assert!((-62_167_219_200..253_402_387_200).contains(&t), "{t}");
        }
        let _ = v.contains(v.not_before);
    }
});
