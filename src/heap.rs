//! Giving heap memory back to the kernel after a burst.
//!
//! musl's allocator returns free pages by itself. glibc's needs two things: `malloc_trim`, and
//! no per-thread cache of freed blocks (tcache). The cache keeps up to seven freed blocks of each
//! size up to 1 KiB; after a burst they lie all over the heap, glibc counts them as in use, and
//! each keeps its page resident through `malloc_trim`. The cache can only be set from
//! `GLIBC_TUNABLES` when the process starts, so the binary starts itself once more with it.

use std::ffi::{OsStr, OsString};

/// The tunable that turns glibc's per-thread cache off.
const NO_TCACHE: &str = "glibc.malloc.tcache_count=0";

/// Hand free heap pages back to the kernel (glibc only; musl does it by itself).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes no pointers and may be called at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Set in the environment of the second start, which never starts a third.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RESTARTED: &str = "EDGEPASS_HEAP_RESTARTED";

/// With glibc, run this binary again with its per-thread cache off, unless `GLIBC_TUNABLES`
/// already sets a cache size (the user's choice wins). Call it first in `main`, before any
/// thread starts. Returns only where nothing was done or the new start failed; the process
/// then runs on as it is. The binary is found through `current_exe` (which valgrind answers
/// with the program, not itself); under valgrind, set `GLIBC_TUNABLES` or trace children.
///
/// It starts again at most once, and not at all in secure mode (a binary given file
/// capabilities, such as `cap_net_bind_service` to listen on port 443, or set-user-ID): glibc
/// then removes the cache setting from `GLIBC_TUNABLES` before `main`, so each start would see
/// it missing and start again, forever.
pub fn restart_without_thread_cache() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(RESTARTED).is_some() || secure_mode() {
            return;
        }
        let Some(value) = tunables(std::env::var_os("GLIBC_TUNABLES").as_deref()) else {
            return;
        };
        let mut args = std::env::args_os();
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut cmd = std::process::Command::new(exe);
        if let Some(name) = args.next() {
            cmd.arg0(name);
        }
        // `exec` returns only on failure (the file gone, say).
        let _ = cmd
            .args(args)
            .env("GLIBC_TUNABLES", value)
            .env(RESTARTED, "1")
            .exec();
    }
}

/// Whether the kernel started this process in secure mode (`AT_SECURE` in its auxiliary
/// vector: set-user-ID, set-group-ID or file capabilities that raise its privileges).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn secure_mode() -> bool {
    use std::ffi::c_ulong;
    /// From the kernel's `linux/auxvec.h`.
    const AT_SECURE: c_ulong = 23;
    extern "C" {
        fn getauxval(kind: c_ulong) -> c_ulong;
    }
    // SAFETY: getauxval takes a number and only reads the process's auxiliary vector; glibc
    // has had it since 2.16.
    unsafe { getauxval(AT_SECURE) != 0 }
}

/// The `GLIBC_TUNABLES` value to start with, given the current one: the user's tunables and
/// the cache off. `None` when the user already sets `tcache_count`.
pub fn tunables(current: Option<&OsStr>) -> Option<OsString> {
    let Some(cur) = current.filter(|c| !c.is_empty()) else {
        return Some(NO_TCACHE.into());
    };
    if cur
        .as_encoded_bytes()
        .windows(12)
        .any(|w| w == b"tcache_count")
    {
        return None;
    }
    let mut v = cur.to_os_string();
    v.push(":");
    v.push(NO_TCACHE);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::tunables;
    use std::ffi::OsStr;

    #[test]
    fn adds_the_cache_setting_and_keeps_the_users_tunables() {
        let t = |s: Option<&str>| tunables(s.map(OsStr::new)).map(|v| v.into_string().unwrap());
        assert_eq!(t(None).as_deref(), Some("glibc.malloc.tcache_count=0"));
        assert_eq!(t(Some("")).as_deref(), Some("glibc.malloc.tcache_count=0"));
        assert_eq!(
            t(Some("glibc.malloc.arena_max=1")).as_deref(),
            Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0")
        );
        assert_eq!(t(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(
            t(Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0")),
            None
        );
    }
}
