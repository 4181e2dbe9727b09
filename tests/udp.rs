//! UDP through a real server and client on 127.0.0.1:0: datagram boundaries, flows, expiry,
//! size bound, slot bound, and the notcp/noudp switches.
#![cfg(feature = "udp")]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use common::udp::*;
use common::*;
use edgepass::arena::Arena;
use edgepass::shutdown::Shutdown;
use smol::future::FutureExt;
use smol::io::AsyncReadExt;
use smol::{Async, Task, Timer};

/// How long a test listens to show that no reply comes.
const SILENCE: Duration = Duration::from_millis(300);

/// A UDP target on 127.0.0.1:0 that answers each datagram with it twice over.
fn udp_doubler() -> (SocketAddr, Task<()>) {
    let s = Async::<UdpSocket>::bind(([127, 0, 0, 1], 0)).expect("bind udp doubler");
    let addr = s.get_ref().local_addr().expect("addr");
    let task = smol::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Ok((n, from)) = s.recv_from(&mut buf).await {
                let twice = [&buf[..n], &buf[..n]].concat();
                let _ = s.send_to(&twice, from).await;
            }
        }
    });
    (addr, task)
}

/// A role started from `url` with `env` as its environment; also its UDP arena.
async fn start_env(url: &str, env: &[(&str, &str)]) -> (Running, Option<Arc<Arena>>) {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let cfg = edgepass::config::parse(url, &lookup).unwrap_or_else(|e| panic!("{url}: {e}"));
    let stop = Shutdown::new();
    let node = edgepass::bind(cfg, stop.clone())
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let arena = node.udp_arena();
    let running = Running {
        tunnel: node.tunnel_addr(),
        public: node.public_addr(),
        stats: node.stats(),
        stop,
        task: smol::spawn(node.run()),
    };
    (running, arena)
}

struct UdpTunnel {
    server: Running,
    client: Running,
    public: SocketAddr,
    arenas: (Option<Arc<Arena>>, Option<Arc<Arena>>),
}

/// A server and a client forwarding to `target`, with the client's pool warm.
async fn udp_tunnel(
    target: SocketAddr,
    (server_q, client_q): (&str, &str),
    env: &[(&str, &str)],
) -> UdpTunnel {
    let url = format!("server://k@127.0.0.1:0/127.0.0.1:0{server_q}");
    let (server, s_arena) = start_env(&url, env).await;
    let tunnel = server.tunnel.expect("tunnel addr");
    let url = format!("client://k@{tunnel}/{target}{client_q}");
    let (client, c_arena) = start_env(&url, env).await;
    let stats = client.stats.clone();
    wait_until("a warm pool", || stats.pool_idle.load(Relaxed) > 0).await;
    UdpTunnel {
        public: server.public.expect("public addr"),
        server,
        client,
        arenas: (s_arena, c_arena),
    }
}

#[test]
fn ten_thousand_datagrams_keep_boundaries_and_contents() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        let t = udp_tunnel(target, ("", "?min=8"), &[]).await;
        let bytes = Arc::new(pattern(65_507 + 256, 7));
        let edges = [
            0usize,
            1,
            2,
            3,
            4,
            255,
            256,
            1399,
            1400,
            1500,
            4096,
            16383,
            16384,
            16385,
            32768,
            65_535 - 28,
            65_506,
            65_507,
        ];
        const FLOWS: usize = 4;
        const EACH: usize = 2_500;
        // One datagram over 8 KiB in flight at a time: four 64 KiB datagrams at once can
        // overflow a socket receive buffer of the default size (rmem_default is 208 KiB),
        // and that loss would be the kernel's, not the tunnel's.
        let big = Arc::new(smol::lock::Mutex::new(()));
        let mut tasks = Vec::new();
        for f in 0..FLOWS {
            let bytes = bytes.clone();
            let big = big.clone();
            let public = t.public;
            tasks.push(smol::spawn(async move {
                let s = user(public);
                let mut x = 0x9e37_79b9u32.wrapping_mul(f as u32 + 1);
                for i in 0..EACH {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    // Every size edge in each flow, then mostly small datagrams with one in
                    // ten of any size up to the IPv4 maximum.
                    let len = match i {
                        i if i < edges.len() => edges[i],
                        i if i % 10 == 0 => x as usize % 65_508,
                        _ => x as usize % 2_000,
                    };
                    let off = (x >> 16) as usize % 256;
                    let mut d = bytes[off..off + len].to_vec();
                    if len >= 4 {
                        d[..4].copy_from_slice(&(i as u32).to_be_bytes());
                    }
                    let _one = if len > 8192 {
                        Some(big.lock().await)
                    } else {
                        None
                    };
                    echo(&s, &d, &format!("flow {f} datagram {i}")).await;
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let total = (FLOWS * EACH) as u64;
        assert!(t.server.stats.udp_rx.get() > total, "udp_rx counted");
        assert_eq!(t.server.stats.udp_rx.get(), t.server.stats.udp_tx.get());
        assert_eq!(t.client.stats.udp_rx.get(), t.server.stats.udp_rx.get());
        assert_eq!(t.server.stats.udp_dropped.load(Relaxed), 0);
        assert_eq!(t.server.stats.udp_active.load(Relaxed), FLOWS);
    });
}

#[test]
fn fifty_sources_each_get_their_own_replies() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        let t = udp_tunnel(target, ("", "?min=64"), &[]).await;
        let users: Vec<_> = (0..50).map(|_| user(t.public)).collect();
        // All at once: 50 new flows racing for pool connections.
        for round in 0..3 {
            for (i, s) in users.iter().enumerate() {
                s.send(format!("user {i} round {round}").as_bytes())
                    .await
                    .expect("send");
            }
        }
        let mut buf = [0u8; 64];
        for (i, s) in users.iter().enumerate() {
            for round in 0..3 {
                let n = recv(s, &mut buf, REPLY_WAIT)
                    .await
                    .unwrap_or_else(|| panic!("user {i}: reply {round} lost"));
                let want = format!("user {i} round {round}");
                assert_eq!(&buf[..n], want.as_bytes(), "user {i}");
            }
        }
        assert_eq!(t.server.stats.udp_active.load(Relaxed), 50);
        assert_eq!(t.client.stats.udp_active.load(Relaxed), 50);
    });
}

#[test]
fn idle_flows_expire_and_return_their_buffers() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        let env = [("UDP_READ_TIMEOUT", "300ms")];
        let t = udp_tunnel(target, ("", ""), &env).await;
        let (Some(sa), Some(ca)) = t.arenas.clone() else {
            panic!("UDP arenas exist when UDP is on");
        };
        assert_eq!(sa.available(), sa.capacity());
        let users: Vec<_> = (0..4).map(|_| user(t.public)).collect();
        for (i, s) in users.iter().enumerate() {
            echo(s, &vec![i as u8; 40_000], &format!("user {i}")).await;
        }
        assert!(sa.available() < sa.capacity(), "flows hold server buffers");
        assert!(ca.available() < ca.capacity(), "flows hold client buffers");
        let (ss, cs) = (t.server.stats.clone(), t.client.stats.clone());
        wait_until("flows to expire", || {
            ss.udp_active.load(Relaxed) == 0 && cs.udp_active.load(Relaxed) == 0
        })
        .await;
        wait_until("buffers back", || {
            sa.available() == sa.capacity() && ca.available() == ca.capacity()
        })
        .await;
        // A source whose flow expired starts a new one.
        echo(&users[0], b"again", "after expiry").await;
    });
}

#[test]
fn oversize_datagrams_are_dropped_and_counted() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        let env = [("UDP_DATA_BUF_SIZE", "1024")];
        let t = udp_tunnel(target, ("", ""), &env).await;
        let s = user(t.public);
        let stats = t.server.stats.clone();
        // Too large before any flow exists, then inside a flow: never truncated.
        s.send(&[1u8; 1025]).await.expect("send");
        wait_until("a drop", || stats.udp_dropped.load(Relaxed) == 1).await;
        echo(&s, &[2u8; 1024], "largest allowed").await;
        s.send(&[3u8; 2000]).await.expect("send");
        wait_until("another drop", || stats.udp_dropped.load(Relaxed) == 2).await;
        echo(&s, b"small", "after the drop").await;
        assert_eq!(stats.udp_rx.get(), 1024 + 5);
    });
}

#[test]
fn oversize_replies_are_dropped_on_the_client() {
    smol::block_on(async {
        let (target, _doubler) = udp_doubler();
        let env = [("UDP_DATA_BUF_SIZE", "1024")];
        let t = udp_tunnel(target, ("", ""), &env).await;
        let s = user(t.public);
        s.send(&[7u8; 600]).await.expect("send");
        let cs = t.client.stats.clone();
        wait_until("the reply dropped", || cs.udp_dropped.load(Relaxed) == 1).await;
        s.send(b"ok").await.expect("send");
        let mut buf = [0u8; 2048];
        let n = recv(&s, &mut buf, REPLY_WAIT)
            .await
            .expect("reply to the small one");
        assert_eq!(
            &buf[..n],
            b"okok",
            "the 1200-byte reply never arrives, not even cut"
        );
    });
}

#[test]
fn an_oversize_frame_closes_the_flow() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        // The server carries 2000-byte datagrams; the client allows 1024-byte frames only.
        let url = "server://k@127.0.0.1:0/127.0.0.1:0";
        let (server, _) = start_env(url, &[]).await;
        let tunnel = server.tunnel.expect("tunnel addr");
        let url = format!("client://k@{tunnel}/{target}");
        let (client, _) = start_env(&url, &[("UDP_DATA_BUF_SIZE", "1024")]).await;
        let (ss, cs) = (server.stats.clone(), client.stats.clone());
        wait_until("a warm pool", || cs.pool_idle.load(Relaxed) > 0).await;
        let s = user(server.public.expect("public"));
        s.send(&[1u8; 2000]).await.expect("send");
        wait_until("the flow to close on both sides", || {
            ss.udp_rx.get() == 2000
                && ss.udp_active.load(Relaxed) == 0
                && cs.udp_active.load(Relaxed) == 0
        })
        .await;
        assert_eq!(
            cs.udp_rx.get(),
            0,
            "nothing of the bad frame reached the target"
        );
        echo(&s, b"next flow", "after the protocol error").await;
    });
}

#[test]
fn new_flows_beyond_slot_are_dropped_existing_ones_keep_working() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        let t = udp_tunnel(target, ("?slot=2", ""), &[]).await;
        let (a, b, c) = (user(t.public), user(t.public), user(t.public));
        echo(&a, b"a", "first flow").await;
        echo(&b, b"b", "second flow").await;
        c.send(b"c").await.expect("send");
        let mut buf = [0u8; 16];
        assert_eq!(
            recv(&c, &mut buf, SILENCE).await,
            None,
            "third flow refused"
        );
        assert_eq!(t.server.stats.udp_dropped.load(Relaxed), 1);
        echo(&a, b"a2", "first flow still up").await;
        echo(&b, b"b2", "second flow still up").await;
    });
}

#[test]
fn noudp_on_the_server_forwards_no_udp() {
    smol::block_on(async {
        // TCP and UDP echo on the same port: TCP must still work, UDP must not.
        let (target, _tcp_echo) = echo_server();
        let (_, _echo) = udp_echo_at(target);
        let t = udp_tunnel(target, ("?noudp=1", ""), &[]).await;
        assert!(t.arenas.0.is_none(), "no UDP buffers on a noudp server");
        let s = user(t.public);
        let _ = s.send(b"hello?").await;
        let mut buf = [0u8; 16];
        assert_eq!(recv(&s, &mut buf, SILENCE).await, None);
        assert_eq!(t.client.stats.udp_active.load(Relaxed), 0);
        assert_eq!(t.client.stats.udp_rx.get(), 0);
        assert_eq!(round_trip(t.public, b"tcp works").await, b"tcp works");
    });
}

#[test]
fn noudp_on_the_client_refuses_flows() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        let t = udp_tunnel(target, ("", "?noudp=1"), &[]).await;
        let s = user(t.public);
        s.send(b"hello?").await.expect("send");
        let cs = t.client.stats.clone();
        wait_until("the client to refuse", || cs.refused.load(Relaxed) == 1).await;
        let mut buf = [0u8; 16];
        assert_eq!(recv(&s, &mut buf, SILENCE).await, None);
        assert_eq!(t.client.stats.udp_rx.get(), 0);
        let ss = t.server.stats.clone();
        wait_until("the server flow to end", || {
            ss.udp_active.load(Relaxed) == 0
        })
        .await;
    });
}

#[test]
fn notcp_forwards_udp_only() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        let t = udp_tunnel(target, ("?notcp=1", ""), &[]).await;
        echo(&user(t.public), b"udp still works", "notcp").await;
        // The TCP user is accepted and closed at once, with nothing forwarded.
        let mut s = Async::<std::net::TcpStream>::connect(t.public)
            .await
            .expect("connect");
        let mut buf = [0u8; 16];
        let read = async { s.read(&mut buf).await.unwrap_or(0) }
            .or(async {
                Timer::after(REPLY_WAIT).await;
                usize::MAX
            })
            .await;
        assert_eq!(read, 0, "TCP user closed");
        assert_eq!(t.client.stats.tcp_active.load(Relaxed), 0);
        assert_eq!(t.client.stats.tcp_rx.get(), 0);
    });
}

/// A UDP flood on the server's public port leaves its TCP users served, with every task of the
/// server on one thread. (The server's receive loop only queues each datagram, so it drains
/// the socket faster than two senders fill it and waits now and then even without its yield;
/// `mode_1_tcp_is_served_during_a_udp_flood` in tests/modes.rs is the test that needs it.)
#[test]
fn tcp_users_are_served_during_a_udp_flood() {
    smol::block_on(async {
        let Some((target, _t, _sink)) = echo_and_udp_sink() else {
            eprintln!("skip: the target's UDP port is taken");
            return;
        };
        let server = start_cfg_on(cfg("server://k@127.0.0.1:0/127.0.0.1:0"), true).await;
        let tunnel = server.tunnel.expect("tunnel addr");
        let _client = start(&format!("client://k@{tunnel}/{target}")).await;
        let stats = server.stats.clone();
        wait_until("a warm pool", || idle(&stats) > 0).await;
        let public = server.public.expect("public addr");
        tcp_is_served_during_a_flood(public, &stats).await;
    });
}
