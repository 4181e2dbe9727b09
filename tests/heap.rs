//! With glibc, the binary runs without glibc's per-thread cache of freed blocks, so a burst's
//! heap can go back to the kernel (src/heap.rs), and a user's own cache setting wins.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

mod common;

use common::bin::*;

/// `GLIBC_TUNABLES` of a server started with environment `env` (that variable or nothing),
/// once it listens.
fn tunables_of_a_server(env: &[(&str, &str)]) -> Option<String> {
    let (server, slog) = spawn("server://k@127.0.0.1:0/127.0.0.1:0?log=info", env);
    // The listen line shows the URL reached the restarted process.
    wait_line(&slog, "server: tunnel on");
    let environ = std::fs::read(format!("/proc/{}/environ", server.pid())).expect("environ");
    // glibc's loader ends each value it reads with a NUL in place of the `:` after it, so
    // the one variable shows as several pieces.
    let pieces: Vec<_> = environ
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(String::from_utf8_lossy)
        .collect();
    pieces
        .join(":")
        .strip_prefix("GLIBC_TUNABLES=")
        .map(str::to_string)
}

#[test]
fn runs_without_the_thread_cache_unless_the_user_sets_one() {
    assert_eq!(
        tunables_of_a_server(&[]).as_deref(),
        Some("glibc.malloc.tcache_count=0")
    );
    assert_eq!(
        tunables_of_a_server(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")]).as_deref(),
        Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0")
    );
    assert_eq!(
        tunables_of_a_server(&[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=3")]).as_deref(),
        Some("glibc.malloc.tcache_count=3")
    );
}
