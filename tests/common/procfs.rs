//! Process figures from /proc (resident memory, open descriptors) and the open-files limit.

use std::process::Command;

/// `VmRSS` of process `pid` ("self" for this one) in KiB, or 0 if it cannot be read.
pub fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of process `pid` ("self" for this one).
pub fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// This process's (soft, hard) open-files limit.
pub fn nofile() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    let mut v = line
        .split_whitespace()
        .skip(3)
        .map(|x| x.parse::<u64>().unwrap_or(u64::MAX));
    (v.next().unwrap_or(1024), v.next().unwrap_or(1024))
}

/// Try to raise this process's open-files limit to `want` (soft and hard) with util-linux
/// `prlimit` (the tests add no crates). Raising the hard limit needs root or
/// CAP_SYS_RESOURCE; otherwise the soft limit goes up to the hard one. Children started after
/// this inherit it. Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = nofile();
    if soft >= want {
        return soft;
    }
    let me = std::process::id().to_string();
    let set = |v: String| {
        Command::new("prlimit")
            .args(["--pid", &me, &format!("--nofile={v}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !set(format!("{want}:{}", want.max(hard))) {
        set(format!("{}:{hard}", want.min(hard)));
    }
    nofile().0
}

/// How many connections fit in the open-files limit when each costs `per` descriptors here,
/// keeping `spare` for everything else; at most `want`.
pub fn fd_budget(want: usize, per: usize, spare: usize) -> usize {
    let soft = nofile().0.min(usize::MAX as u64) as usize;
    want.min(soft.saturating_sub(spare) / per.max(1))
}

/// This machine's IPv4 TCP sockets (the lines of /proc/net/tcp, split into fields: sl,
/// local_address, rem_address, st, tx_queue:rx_queue, tr:tm->when, ...) for which `pick` gives
/// a value.
fn tcp_sockets<T>(pick: impl Fn(&[&str]) -> Option<T>) -> Vec<T> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 5).then(|| pick(&f)).flatten()
        })
        .collect()
}

/// The local ports of this machine's established IPv4 TCP connections to port `remote`,
/// sorted.
pub fn ports_connected_to(remote: u16) -> Vec<u16> {
    let rem = format!(":{remote:04X}");
    let mut ports = tcp_sockets(|f| {
        // st 01 is ESTABLISHED.
        if f[2].ends_with(&rem) && f[3] == "01" {
            u16::from_str_radix(f[1].rsplit_once(':')?.1, 16).ok()
        } else {
            None
        }
    });
    ports.sort_unstable();
    ports
}

/// The first of this machine's IPv4 TCP sockets (the lines of /proc/net/tcp, split into
/// fields: sl, local_address, rem_address, st, tx_queue:rx_queue, tr:tm->when, ...) for which
/// `pick` gives a value.
fn tcp_socket<T>(pick: impl Fn(&[&str]) -> Option<T>) -> Option<T> {
    tcp_sockets(pick).into_iter().next()
}

/// Connections waiting in the accept queue of the IPv4 listener on `port` (the `rx_queue` of
/// its LISTEN line in /proc/net/tcp), if there is one.
pub fn accept_queue(port: u16) -> Option<usize> {
    let local = format!(":{port:04X}");
    tcp_socket(|f| {
        // st 0A is LISTEN.
        if f[1].ends_with(&local) && f[3] == "0A" {
            usize::from_str_radix(f[4].split_once(':')?.1, 16).ok()
        } else {
            None
        }
    })
}

/// `net.core.somaxconn`: the kernel's cap on a listener's queue (128 if unreadable).
pub fn somaxconn() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(128)
}

/// The kernel timer of this machine's IPv4 TCP socket `local_port` → `remote_port`, from its
/// /proc/net/tcp line: (kind, seconds left). Kinds: 0 none, 1 retransmit, 2 keepalive (or
/// SYN-ACK), 3 TIME_WAIT, 4 zero-window probe.
pub fn tcp_timer(local_port: u16, remote_port: u16) -> Option<(u8, f64)> {
    let (local, remote) = (format!(":{local_port:04X}"), format!(":{remote_port:04X}"));
    tcp_socket(|f| {
        // `when` is in clock ticks (USER_HZ, 100 per second).
        if f[1].ends_with(&local) && f[2].ends_with(&remote) {
            let (kind, when) = f[5].split_once(':')?;
            let ticks = u64::from_str_radix(when, 16).ok()?;
            Some((u8::from_str_radix(kind, 16).ok()?, ticks as f64 / 100.0))
        } else {
            None
        }
    })
}
