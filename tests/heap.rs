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
        .filter(|p| !p.is_empty() && !p.starts_with(b"EDGEPASS_HEAP_RESTARTED="))
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

/// A binary given file capabilities (here `cap_net_bind_service`, as for listening on port 443)
/// and run by an unprivileged user starts in secure mode, where glibc drops the cache setting
/// from `GLIBC_TUNABLES` before `main`. It must start and run, not start itself again and
/// again. Needs root, setcap and setpriv; says so and passes where they are missing.
#[test]
fn starts_once_with_file_capabilities() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let tool = |t: &str| Command::new(t).arg("--version").output().is_ok();
    if root.ok() != Some(0) || !tool("setcap") || !tool("setpriv") {
        eprintln!("skipped: needs root, setcap and setpriv");
        return;
    }
    // A copy, in a directory the unprivileged user can read, with the capability.
    let dir = std::env::temp_dir().join(format!("edgepass-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let copy = dir.join("edgepass");
    std::fs::copy(bin(), &copy).expect("copy the binary");
    let open = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
    };
    open(&dir).and_then(|()| open(&copy)).expect("chmod");
    let set = Command::new("setcap")
        .args(["cap_net_bind_service+ep"])
        .arg(&copy)
        .status();
    if !set.is_ok_and(|s| s.success()) {
        eprintln!("skipped: setcap failed (file system without capabilities?)");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .arg("--version")
        .env_remove("GLIBC_TUNABLES")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = Child(c.spawn().expect("setpriv"));
    let code = child.exit_within(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(0), "did not start (restarting itself forever?)");
}
