//! NAT for real: network namespaces client-ns (10.99.1.2) — router-ns (10.99.1.1 / 10.99.2.1,
//! iptables MASQUERADE) — server-ns (10.99.2.2), the real binaries in them. The tunnel works
//! through the NAT; flushing the router's conntrack table (a NAT rebinding: the old mapping's
//! packets are dropped as invalid) is detected by heartbeats and the client recovers by
//! itself; 2% loss (and 50 ms delay where the kernel has netem) still gives correct data.
//! Needs root (`ip netns add`); skips with a message otherwise. Run: `tests/nat.sh`.
//!
//! The echo target (client-ns) and the user (server-ns) are this test binary re-run inside
//! the namespace through `ip netns exec` with `EP_NAT_ROLE` set (the `nat_helper` test).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin::*;
use common::*;

const ENV: &[(&str, &str)] = &[("REPORT_INTERVAL", "1s"), ("SERVICE_COOLDOWN", "100ms")];

/// The namespaces of one run; dropping removes them (and the links inside them).
struct Net {
    names: [String; 3],
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

impl Net {
    fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }
}

/// Run `cmd` (a shell line) in the root namespace or, with `ns`, inside it; true on success.
fn sh(ns: Option<&str>, cmd: &str) -> bool {
    let mut c = match ns {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", n, "sh", "-c", cmd]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", cmd]);
            c
        }
    };
    c.stdout(Stdio::null());
    c.status().is_ok_and(|s| s.success())
}

fn must(ns: Option<&str>, cmd: &str) {
    assert!(sh(ns, cmd), "failed: {cmd} (in {ns:?})");
}

/// Build the three namespaces, or `None` (with a message) where that is not allowed.
fn build() -> Option<Net> {
    let id = std::process::id() % 100_000;
    let names = [format!("epc{id}"), format!("epr{id}"), format!("eps{id}")];
    if !sh(None, &format!("ip netns add {}", names[0])) {
        eprintln!("SKIPPED: cannot create network namespaces here (needs root and `ip netns add`)");
        return None;
    }
    let _ = sh(None, &format!("ip netns add {}", names[1]));
    let _ = sh(None, &format!("ip netns add {}", names[2]));
    let net = Net { names };
    let (c, r, s) = (net.ns(0), net.ns(1), net.ns(2));
    must(
        None,
        &format!("ip link add vc{id} type veth peer name vrc{id}"),
    );
    must(
        None,
        &format!("ip link set vc{id} netns {c} && ip link set vrc{id} netns {r}"),
    );
    must(
        None,
        &format!("ip link add vs{id} type veth peer name vrs{id}"),
    );
    must(
        None,
        &format!("ip link set vs{id} netns {s} && ip link set vrs{id} netns {r}"),
    );
    must(Some(c), &format!("ip link set lo up && ip addr add 10.99.1.2/24 dev vc{id} && ip link set vc{id} up && ip route add default via 10.99.1.1"));
    // The server namespace has no route back to 10.99.1.0/24: only the NAT makes replies work.
    must(
        Some(s),
        &format!(
            "ip link set lo up && ip addr add 10.99.2.2/24 dev vs{id} && ip link set vs{id} up"
        ),
    );
    must(Some(r), &format!("ip link set lo up && ip addr add 10.99.1.1/24 dev vrc{id} && ip link set vrc{id} up && ip addr add 10.99.2.1/24 dev vrs{id} && ip link set vrs{id} up && sysctl -qw net.ipv4.ip_forward=1"));
    must(
        Some(r),
        &format!("iptables -t nat -A POSTROUTING -o vrs{id} -j MASQUERADE"),
    );
    // After a flush, packets of old connections are not picked up again (no loose tracking) and
    // are dropped: the old mapping is dead, as after a real NAT reboot or rebinding.
    must(Some(r), "sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0 && iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP");
    Some(net)
}

/// This test binary re-run in namespace `ns` as `role` with `vars`.
fn helper(ns: &str, role: &str, vars: &[(&str, String)]) -> std::process::Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(exe)
        .args(["nat_helper", "--exact", "--ignored", "--nocapture"])
        .env("EP_NAT_ROLE", role)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in vars {
        c.env(k, v);
    }
    c.spawn().expect("spawn helper")
}

/// A user in the server namespace: `bytes` through the public port, checked. True if intact.
fn user(net: &Net, bytes: usize, seed: u32) -> bool {
    let mut c = Child(helper(
        net.ns(2),
        "user",
        &[
            ("EP_NAT_BYTES", bytes.to_string()),
            ("EP_NAT_SEED", seed.to_string()),
        ],
    ));
    c.exit_within(WAIT * 2) == Some(0)
}

/// The roles run inside the namespaces (not a test on its own: returns at once without
/// `EP_NAT_ROLE`).
#[test]
#[ignore = "helper of nat_traversal_rebinding_and_loss"]
fn nat_helper() {
    let Ok(role) = std::env::var("EP_NAT_ROLE") else {
        return;
    };
    match role.as_str() {
        "echo" => smol::block_on(async {
            let (_, task) = echo_on(7000);
            task.await;
        }),
        "user" => {
            let n: usize = std::env::var("EP_NAT_BYTES")
                .expect("bytes")
                .parse()
                .expect("n");
            let seed: u32 = std::env::var("EP_NAT_SEED")
                .expect("seed")
                .parse()
                .expect("seed");
            let data = pattern(n, seed);
            let back = smol::block_on(within(
                WAIT,
                round_trip(([127, 0, 0, 1], 7200).into(), &data),
            ));
            assert!(back.is_some_and(|b| b == data), "user: data wrong or late");
        }
        other => panic!("unknown role {other}"),
    }
}

/// The echo server of the harness on a fixed port (inside our own namespace).
fn echo_on(port: u16) -> (std::net::SocketAddr, smol::Task<()>) {
    echo_server_at(([127, 0, 0, 1], port).into())
}

#[test]
#[ignore = "needs root and network namespaces; tests/nat.sh"]
fn nat_traversal_rebinding_and_loss() {
    let Some(net) = build() else { return };
    let t0 = Instant::now();
    let _echo = Child(helper(net.ns(0), "echo", &[]));
    let netns = |ns: &str, url: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, BIN, url])
            .env_clear()
            .envs(ENV.iter().copied())
            .stdin(Stdio::null());
        spawn_cmd(c)
    };
    let (mut server, slog) = netns(
        net.ns(2),
        "server://s3cret@10.99.2.2:7100/127.0.0.1:7200?log=info",
    );
    wait_line(&slog, "server: tunnel on");
    let (mut client, clog) = netns(
        net.ns(0),
        "client://s3cret@10.99.2.2:7100/127.0.0.1:7000?log=info",
    );
    wait_line(&clog, "session up");
    // The server sees the router's address: the NAT is in the path.
    let line = wait_line(&slog, "session up");
    assert!(line.contains("10.99.2.1:"), "not through the NAT: {line}");
    assert!(user(&net, 256 * 1024, 1), "no traffic through the NAT");

    // Rebinding: flush the NAT table; the old connections' packets now die at the router.
    drain(&clog);
    let flushed = Instant::now();
    if !sh(Some(net.ns(1)), "conntrack -F") {
        eprintln!("SKIPPED rebinding: `conntrack` is not installed (apt-get install conntrack)");
    } else {
        let ended = wait_line(&clog, "ended");
        let detected = flushed.elapsed();
        assert!(ended.contains("no heartbeat"), "{ended}");
        wait_line(&clog, "session up");
        let mut up = 0;
        while !user(&net, 64 * 1024, 2) {
            up += 1;
            assert!(up < 20, "no traffic after the rebinding");
        }
        let back = flushed.elapsed();
        eprintln!("FIGURE NAT rebinding: dead link detected after {detected:?}, traffic back after {back:?}");
        assert!(back < Duration::from_secs(10), "recovery took {back:?}");
    }

    // Loss (and delay where the kernel has netem) on the router's link to the server.
    let r = net.ns(1);
    let id = std::process::id() % 100_000;
    let how = if sh(
        Some(r),
        &format!("tc qdisc add dev vrs{id} root netem loss 2% delay 50ms"),
    ) {
        "tc netem loss 2% delay 50ms"
    } else {
        // This kernel has no sch_netem: drop 2% with iptables instead (no added delay).
        must(
            Some(r),
            "iptables -I FORWARD -m statistic --mode random --probability 0.02 -j DROP",
        );
        "iptables statistic 2% drop both ways (no netem in this kernel)"
    };
    let sent = Instant::now();
    assert!(
        user(&net, 4 << 20, 3),
        "4 MiB through a lossy link came back wrong"
    );
    eprintln!(
        "FIGURE NAT loss: 4 MiB echoed intact in {:?} with {how}",
        sent.elapsed()
    );
    assert!(server.running() && client.running());
    eprintln!("FIGURE NAT test: {:?} in all", t0.elapsed());
}
