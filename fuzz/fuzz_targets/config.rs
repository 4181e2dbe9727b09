//! Fuzzes the URL/config parser and the command line: any input, no panic; a URL that parses
//! names a valid configuration (min <= max, a slot, a known role).
#![no_main]

use edgepass::config::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Split off an environment value so the NP_* path is fuzzed too.
    let (url, env_val) = text.split_once('\n').unwrap_or((text, ""));
    let env = |k: &str| (k == "NP_REPORT_INTERVAL" || k == "MIN_POOL_CAPACITY").then(|| env_val.to_string());
    if let Ok(cfg) = parse(url, &env) {
        assert!(cfg.min <= cfg.max && cfg.max >= 1 && cfg.slot >= 1);
        let _ = cfg.key_bytes();
    }
    let args = url.split(' ').map(std::ffi::OsString::from).collect();
    let _ = edgepass::cli::parse_args(args, &env);
});
