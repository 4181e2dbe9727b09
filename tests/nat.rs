//! NAT for real: network namespaces client-ns (10.99.1.2) — router-ns (10.99.1.1 / 10.99.2.1,
//! iptables MASQUERADE) — server-ns (10.99.2.2), the real binaries in them. Run: `tests/nat.sh`.
//! Needs root (`ip netns add`); skips with a message otherwise.
//!
//! `nat_traversal_rebinding_and_loss` (client-ns and router-ns joined by a veth pair): the
//! tunnel works through the NAT; flushing the router's conntrack table (a NAT rebinding: the
//! old mapping's packets are dropped as invalid) is detected by heartbeats and the client
//! recovers by itself; 2% loss on the router's link to the server (iptables, or `tc netem`
//! where the kernel has it) still gives correct data.
//!
//! `nat_delayed_lossy_link`: client-ns and router-ns are joined by a link emulated in user
//! space instead (`common::link`: a TUN device in each namespace, a thread of this test
//! carrying the packets between them 25 ms late each way, 50 ms round trip, and dropping 2% of
//! them each way), as `tc netem` would do, which this kernel may lack. The tunnel through the
//! NAT carries 4 MiB intact across it, and the client's ping shows the delay.
//!
//! `nat_vanished_user_closed_by_keepalive`: a user in router-ns holds a connection to the
//! server's public port, then its packets stop (iptables drops them, as when a device loses
//! power or a NAT drops its mapping: no FIN, no RST). With `TCP_KEEPALIVE=2s` the server's
//! probes go unanswered, it closes the connection, and the client closes the target's end.
//!
//! The echo target (client-ns) and the users (server-ns, router-ns) are this test binary re-run
//! inside the namespace through `ip netns exec` with `EP_NAT_ROLE` set (the `nat_helper` test).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin::*;
use common::*;

const ENV: &[(&str, &str)] = &[("REPORT_INTERVAL", "1s"), ("SERVICE_COOLDOWN", "100ms")];

/// The namespaces of one run; dropping stops the link emulator, if any, and removes them (and
/// the links inside them).
struct Net {
    names: [String; 3],
    /// The tag and pid in the names of the namespaces and interfaces.
    id: String,
    link: Option<link::Link>,
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(l) = self.link.take() {
            l.stop();
        }
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

/// How the client namespace is wired to the router.
enum Wire {
    /// A veth pair: no delay, no loss.
    Veth,
    /// Two TUN devices joined by the link emulator of `common::link` with this shape.
    Emulated(link::Shape),
}

/// Build the three namespaces (names and interfaces carry `tag` and the pid, so tests can run
/// side by side), or `None` (with a message) where that is not allowed.
fn build(tag: char, wire: Wire) -> Option<Net> {
    let id = format!("{tag}{}", std::process::id() % 100_000);
    let names = [format!("epc{id}"), format!("epr{id}"), format!("eps{id}")];
    if !sh(None, &format!("ip netns add {}", names[0])) {
        eprintln!("SKIPPED: cannot create network namespaces here (needs root and `ip netns add`)");
        return None;
    }
    let _ = sh(None, &format!("ip netns add {}", names[1]));
    let _ = sh(None, &format!("ip netns add {}", names[2]));
    let mut net = Net {
        names,
        id: id.clone(),
        link: None,
    };
    let [c, r, s] = net.names.clone();
    let (c, r, s) = (c.as_str(), r.as_str(), s.as_str());
    match wire {
        Wire::Veth => must(
            None,
            &format!("ip link add vc{id} type veth peer name vrc{id}"),
        ),
        Wire::Emulated(shape) => {
            if !std::path::Path::new("/dev/net/tun").exists() {
                let _ = sh(None, "mkdir -p /dev/net && mknod /dev/net/tun c 10 200");
            }
            let (Ok(a), Ok(b)) = (
                link::tun(&format!("vc{id}")),
                link::tun(&format!("vrc{id}")),
            ) else {
                eprintln!("SKIPPED: cannot create TUN devices here (/dev/net/tun)");
                return None;
            };
            net.link = Some(link::Link::start(a, b, shape));
        }
    }
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
#[ignore = "helper of the NAT tests"]
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
        "hold" => smol::block_on(async {
            let addr: std::net::SocketAddr = std::env::var("EP_NAT_ADDR")
                .expect("addr")
                .parse()
                .expect("addr");
            let back = within(WAIT, echo_once(addr, b"ping")).await;
            let mut s = back.expect("user: no echo in time");
            // Hold it: no more bytes, no close, until the test kills this process.
            let mut buf = [0u8; 16];
            let _ = smol::io::AsyncReadExt::read(&mut s, &mut buf).await;
        }),
        other => panic!("unknown role {other}"),
    }
}

/// The echo server of the harness on a fixed port (inside our own namespace).
fn echo_on(port: u16) -> (std::net::SocketAddr, smol::Task<()>) {
    echo_server_at(([127, 0, 0, 1], port).into())
}

/// The real binaries in the namespaces with the session up: the echo target and the client
/// in client-ns, the server in server-ns.
struct Tunnel {
    server: Child,
    client: Child,
    clog: std::sync::mpsc::Receiver<String>,
    slog: std::sync::mpsc::Receiver<String>,
    _echo: Child,
}

/// [`tunnel_env`] with [`ENV`].
fn tunnel(net: &Net) -> Tunnel {
    tunnel_env(net, ENV)
}

/// The tunnel with the binaries' environment `env`; users on port 7200 of every address of
/// server-ns.
fn tunnel_env(net: &Net, env: &[(&str, &str)]) -> Tunnel {
    let _echo = Child(helper(net.ns(0), "echo", &[]));
    let netns = |ns: &str, url: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, BIN, url])
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        spawn_cmd(c)
    };
    let (server, slog) = netns(
        net.ns(2),
        "server://s3cret@10.99.2.2:7100/0.0.0.0:7200?log=info",
    );
    wait_line(&slog, "server: tunnel on");
    let (client, clog) = netns(
        net.ns(0),
        "client://s3cret@10.99.2.2:7100/127.0.0.1:7000?log=info",
    );
    wait_line(&clog, "session up");
    // The server sees the router's address: the NAT is in the path.
    let line = wait_line(&slog, "session up");
    assert!(line.contains("10.99.2.1:"), "not through the NAT: {line}");
    Tunnel {
        server,
        client,
        clog,
        slog,
        _echo,
    }
}

#[test]
#[ignore = "needs root and network namespaces; tests/nat.sh"]
fn nat_traversal_rebinding_and_loss() {
    let Some(net) = build('n', Wire::Veth) else {
        return;
    };
    let t0 = Instant::now();
    let Tunnel {
        mut server,
        mut client,
        clog,
        _echo,
        ..
    } = tunnel(&net);
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
    let id = &net.id;
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

/// The link of [`nat_delayed_lossy_link`]: 25 ms each way (a 50 ms round trip, as `tc netem
/// delay 50ms` on one side of a link) and 2% of the packets lost each way.
const SHAPE: link::Shape = link::Shape {
    delay: Duration::from_millis(25),
    loss_per_10k: 200,
    seed: 0x5eed,
    queue: 4096,
};

/// `... ping 51.3 ms` at the end of a stats line -> 51.3 ms, if a ping has been answered.
fn stats_ping(line: &str) -> Option<Duration> {
    let (_, tail) = line.rsplit_once(", ping ")?;
    let ms: f64 = tail.strip_suffix(" ms")?.parse().ok()?;
    (ms > 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
}

/// The client reaches the router over an emulated link with delay and loss (this kernel may
/// have no `sch_netem`): the tunnel through the NAT still carries 4 MiB each way intact, and
/// the client's own ping shows the delay is there.
#[test]
#[ignore = "needs root, network namespaces and /dev/net/tun; tests/nat.sh"]
fn nat_delayed_lossy_link() {
    let Some(mut net) = build('d', Wire::Emulated(SHAPE)) else {
        return;
    };
    let t0 = Instant::now();
    let Tunnel {
        mut server,
        mut client,
        clog,
        _echo,
        ..
    } = tunnel(&net);
    let sent = Instant::now();
    assert!(
        user(&net, 4 << 20, 4),
        "4 MiB through the delayed lossy link came back wrong"
    );
    let took = sent.elapsed();
    // The client pings the server over the tunnel every REPORT_INTERVAL (1 s) and logs the
    // last round trip in its stats line: read three answered ones once the link is idle.
    drain(&clog);
    let mut pings = Vec::new();
    let deadline = Instant::now() + WAIT;
    while pings.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no answered pings in the client's stats"
        );
        pings.extend(stats_ping(&wait_line(&clog, "stats:")));
    }
    pings.sort();
    let (min, max) = (pings[0], pings[pings.len() - 1]);
    assert!(server.running() && client.running());
    let counts = net.link.take().expect("the link emulator").stop();
    let sum = |a: [u64; 2]| a[0] + a[1];
    let (fwd, lost, over) = (
        sum(counts.forwarded),
        sum(counts.lost),
        sum(counts.overflow),
    );
    eprintln!(
        "FIGURE NAT delayed lossy link ({:?} each way, {}% loss each way): idle ping {min:?} .. {max:?} ({} pings); 4 MiB echoed intact in {took:?}; link: {fwd} packets delivered, {lost} dropped at random ({:.2}%), {over} for a full queue",
        SHAPE.delay,
        SHAPE.loss_per_10k as f64 / 100.0,
        pings.len(),
        100.0 * lost as f64 / (fwd + lost + over).max(1) as f64,
    );
    assert!(
        min >= Duration::from_millis(45),
        "ping {min:?}: the link's delay is not there"
    );
    assert!(lost > 0, "the link dropped nothing");
    eprintln!(
        "FIGURE NAT delayed lossy link test: {:?} in all",
        t0.elapsed()
    );
}

/// A user that vanishes without a FIN or RST (its packets dropped from then on) is closed by
/// the server's keepalive, and the client closes the target's end: nothing is held for good.
#[test]
#[ignore = "needs root and network namespaces; tests/nat.sh"]
fn nat_vanished_user_closed_by_keepalive() {
    let Some(net) = build('k', Wire::Veth) else {
        return;
    };
    let env: Vec<_> = ENV
        .iter()
        .copied()
        .chain([("TCP_KEEPALIVE", "2s")])
        .collect();
    let t = tunnel_env(&net, &env);
    // The user in router-ns, one hop from the server; it echoes once, then holds.
    let _user = Child(helper(
        net.ns(1),
        "hold",
        &[("EP_NAT_ADDR", "10.99.2.2:7200".to_string())],
    ));
    wait_line(&t.slog, "tcp 1 open");
    wait_line(&t.clog, "tcp 1 open");
    // From now on nothing the user's host sends leaves it: the server's probes go unanswered.
    must(
        Some(net.ns(1)),
        "iptables -I OUTPUT -p tcp -d 10.99.2.2 --dport 7200 -j DROP",
    );
    let cut = Instant::now();
    wait_line(&t.slog, "tcp 0 open");
    let server_closed = cut.elapsed();
    wait_line(&t.clog, "tcp 0 open");
    let client_closed = cut.elapsed();
    eprintln!(
        "FIGURE NAT vanished user: closed by keepalive (TCP_KEEPALIVE=2s, 3 probes 1 s apart) {server_closed:?} after its packets stopped; the client's target connection closed by {client_closed:?} (stats lines every 1 s)"
    );
    // 2 s of silence and 3 probes 1 s apart: about 5 s, plus a stats interval to see it.
    assert!(
        server_closed < Duration::from_secs(12),
        "took {server_closed:?}"
    );
}
