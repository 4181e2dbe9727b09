//! NodePass parity through real roles on 127.0.0.1:0: PROXY headers, failover, dns, dial,
//! rate and slot.

mod common;
mod targets;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use edgepass::config::{self, HostPort};
use edgepass::dialer::Dialer;
use edgepass::proxy;
use edgepass::shutdown::Shutdown;
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Task, Timer};
use targets::*;

#[test]
fn proxy_v1_and_v2_reach_the_target() {
    smol::block_on(async {
        for mode in [1u8, 2] {
            let (target, rx, _t) = recording_target("127.0.0.1");
            let t = tunnel("k", target, &format!("?proxy={mode}")).await;
            let me = user_says_hi(t.public).await;
            let (_, got) = recv(&rx).await;
            let want = proxy::Header::new(mode, me, target).unwrap();
            assert!(got.starts_with(want.bytes()), "proxy={mode}: {got:?}");
            assert_eq!(&got[want.bytes().len()..], b"hi");
            if mode == 1 {
                let text = format!(
                    "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nhi",
                    me.port(),
                    target.port()
                );
                assert_eq!(got, text.as_bytes());
            } else {
                assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n");
                assert_eq!(&got[12..16], &[0x21, 0x11, 0, 12]);
                assert_eq!(&got[16..24], &[127, 0, 0, 1, 127, 0, 0, 1]);
                assert_eq!(&got[24..26], &me.port().to_be_bytes());
                assert_eq!(&got[26..28], &target.port().to_be_bytes());
            }
        }
        // proxy=0: the target gets the user's bytes only.
        let (target, rx, _t) = recording_target("127.0.0.1");
        let t = tunnel("k", target, "").await;
        user_says_hi(t.public).await;
        assert_eq!(recv(&rx).await.1, b"hi");
    });
}

/// An address nothing listens on: bound, then dropped.
fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn failover_with_first_target_down() {
    smol::block_on(async {
        let down = dead_port();
        let (up, _echo) = echo_server();
        let server = start("server://k@127.0.0.1:0/127.0.0.1:0").await;
        let tun = server.tunnel.unwrap();
        let client = start(&format!("client://k@{tun}/{down},{up}")).await;
        let st = client.stats.clone();
        wait_until("a warm pool", || st.pool_idle.load(Relaxed) > 0).await;
        let public = server.public.unwrap();
        for i in 0..6u32 {
            let data = pattern(1000, i);
            assert_eq!(round_trip(public, &data).await, data, "connection {i}");
        }
        assert_eq!(client.stats.refused.load(Relaxed), 0);
    });
}

/// Start a role with `env` as its environment (e.g. a short TCP_DIAL_TIMEOUT).
async fn start_env(
    url: &str,
    env: &[(&str, &str)],
) -> (Shutdown, Task<edgepass::error::Result<()>>) {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cfg = config::parse(url, &|k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .unwrap();
    let stop = Shutdown::new();
    let node = edgepass::bind(cfg, stop.clone()).await.unwrap();
    (stop, smol::spawn(node.run()))
}

/// A listener whose accept queue is full: connects to it hang until they time out (Linux
/// drops SYNs to a full queue). `None` when this machine answers them anyway.
async fn blackhole() -> Option<(SocketAddr, Vec<Async<TcpStream>>, TcpListener)> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    rustix::net::listen(&l, 0).unwrap();
    let addr = l.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        let c = Async::<TcpStream>::connect(addr)
            .or(async {
                Timer::after(Duration::from_millis(200)).await;
                Err(std::io::ErrorKind::TimedOut.into())
            })
            .await;
        match c {
            Ok(c) => held.push(c),
            Err(_) => return Some((addr, held, l)),
        }
    }
    None
}

/// [`blackhole`]'s parts, or the end of the test (with a line saying why) where connects to a
/// full accept queue do not hang.
macro_rules! blackhole_or_skip {
    () => {
        match blackhole().await {
            Some(hole) => hole,
            None => {
                eprintln!("skipped: connects to a full accept queue do not hang here");
                return;
            }
        }
    };
}

#[test]
fn failed_target_is_skipped_for_a_while() {
    smol::block_on(async {
        let (hole, _held, _l) = blackhole_or_skip!();
        let (up, _echo) = echo_server();
        let timeout = Duration::from_millis(800);
        let env = [("TCP_DIAL_TIMEOUT", "800ms")];
        let server = start("server://k@127.0.0.1:0/127.0.0.1:0").await;
        let tun = server.tunnel.unwrap();
        let (stop_c, _c) = start_env(&format!("client://k@{tun}/{hole},{up}"), &env).await;
        let public = server.public.unwrap();
        // The first user that lands on the dead target pays one dial timeout, then fails over.
        let t0 = Instant::now();
        assert_eq!(round_trip(public, b"one").await, b"one");
        assert_eq!(round_trip(public, b"two").await, b"two");
        assert!(t0.elapsed() >= timeout, "the dead target was dialed once");
        // Within SKIP the dead target is passed over: no user waits for it again.
        let t1 = Instant::now();
        for i in 0..4u32 {
            let data = pattern(100, i);
            assert_eq!(round_trip(public, &data).await, data);
        }
        assert!(
            t1.elapsed() < timeout,
            "4 connections took {:?}: the dead target was dialed again",
            t1.elapsed()
        );
        stop_c.trigger();
    });
}

#[test]
fn dns_cache_re_resolves_after_ttl() {
    smol::block_on(async {
        let (echo, _e) = echo_server();
        let hp = HostPort {
            host: config::Host::Name("localhost".into()),
            port: echo.port(),
        };
        let ttl = Duration::from_millis(200);
        let d = Dialer::with(Duration::from_secs(5), None, ttl);
        d.dial(&hp).await.unwrap();
        d.dial(&hp).await.unwrap();
        assert_eq!(d.lookups(), 1, "second dial within dns= uses the cache");
        Timer::after(ttl + Duration::from_millis(50)).await;
        d.dial(&hp).await.unwrap();
        assert_eq!(d.lookups(), 2, "looked up again once dns= passed");
        // dns=0: every dial looks the name up.
        let d = Dialer::with(Duration::from_secs(5), None, Duration::ZERO);
        d.dial(&hp).await.unwrap();
        d.dial(&hp).await.unwrap();
        assert_eq!(d.lookups(), 2);
    });
}

#[test]
fn host_names_in_the_url() {
    smol::block_on(async {
        let (echo, _e) = echo_server();
        let server = start("server://k@127.0.0.1:0/127.0.0.1:0").await;
        let port = server.tunnel.unwrap().port();
        let client = start(&format!(
            "client://k@localhost:{port}/localhost:{}?dns=100ms",
            echo.port()
        ))
        .await;
        let st = client.stats.clone();
        wait_until("a warm pool", || st.pool_idle.load(Relaxed) > 0).await;
        let public = server.public.unwrap();
        assert_eq!(round_trip(public, b"by name").await, b"by name");
        Timer::after(Duration::from_millis(150)).await;
        assert_eq!(round_trip(public, b"again").await, b"again");
    });
}

#[test]
fn dial_sets_the_source_address() {
    smol::block_on(async {
        let mut sources = vec!["127.0.0.1"];
        if TcpListener::bind("127.0.0.2:0").is_ok() {
            sources.push("127.0.0.2");
        } else {
            eprintln!("127.0.0.2 is not usable here: testing dial=127.0.0.1 only");
        }
        for src in sources {
            let (target, rx, _t) = recording_target("127.0.0.1");
            let t = tunnel("k", target, &format!("?dial={src}")).await;
            user_says_hi(t.public).await;
            let (peer, got) = recv(&rx).await;
            assert_eq!(got, b"hi");
            assert_eq!(peer.ip(), src.parse::<IpAddr>().unwrap(), "dial={src}");
        }
    });
}

#[test]
fn dial_tries_the_next_address_while_one_hangs() {
    smol::block_on(async {
        let (hole, _held, _l) = blackhole_or_skip!();
        let (echo, _e) = echo_server();
        second_answers_while_first_hangs(hole, echo).await;
    });
}

/// Dial `[hole, good]` with a minute's timeout and no `dial=`: `good` connects while `hole`
/// hangs. One address at a time, the hung one would keep the dial for its whole minute.
async fn second_answers_while_first_hangs(hole: SocketAddr, good: SocketAddr) {
    let d = Dialer::with(Duration::from_secs(60), None, Duration::ZERO);
    let s = within(Duration::from_secs(20), d.connect_any(&[hole, good]))
        .await
        .expect("the second address tried while the first hangs")
        .unwrap();
    assert_eq!(s.get_ref().peer_addr().unwrap(), good);
}

#[test]
fn dial_timeout_bounds_all_addresses_together() {
    smol::block_on(async {
        let (hole, _held, _l) = blackhole_or_skip!();
        // Eight addresses that never answer (the same one eight times will do).
        let addrs = [hole; 8];
        let timeout = Duration::from_secs(1);
        let d = Dialer::with(timeout, None, Duration::ZERO);
        let t0 = Instant::now();
        let e = d.connect_any(&addrs).await.expect_err("no address answers");
        let took = t0.elapsed();
        assert!(matches!(e, edgepass::error::Error::Timeout(_)), "{e}");
        assert!(took >= timeout, "took {took:?}");
        // A timeout per attempt, the attempts 250 ms apart, would end after 2.75 s; one after
        // another, after 8 s.
        assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
    });
}

#[test]
fn dial_keeps_to_the_source_family_while_it_may_answer() {
    smol::block_on(async {
        let (hole, _held, _l) = blackhole_or_skip!();
        let Ok(l6) = TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        };
        let v6 = l6.local_addr().unwrap();
        // dial=127.0.0.1: the IPv6 address (which would answer at once) waits for the IPv4
        // one, which never answers, and the dial timeout ends both.
        let d = Dialer::with(
            Duration::from_millis(800),
            Some("127.0.0.1".parse().unwrap()),
            Duration::ZERO,
        );
        let e = d
            .connect_any(&[hole, v6])
            .await
            .expect_err("IPv6 tried beside dial=");
        assert!(matches!(e, edgepass::error::Error::Timeout(_)), "{e}");
        // Without dial=, it is tried 250 ms after the first.
        second_answers_while_first_hangs(hole, v6).await;
    });
}

#[test]
fn dial_falls_back_when_the_address_is_not_ours() {
    smol::block_on(async {
        // 192.0.2.0/24 is TEST-NET-1: not on this host, so binding it fails.
        let (echo, _e) = echo_server();
        let t = tunnel("k", echo, "?dial=192.0.2.123").await;
        for i in 0..3u32 {
            let data = pattern(500, i);
            assert_eq!(round_trip(t.public, &data).await, data);
        }
    });
}

#[test]
fn rate_limits_throughput() {
    smol::block_on(async {
        let (echo, _e) = echo_server();
        // rate=8: 8 Mbit/s = 1 MB/s per direction; 4 MiB take at least ~3.9 s (less a burst).
        let t = tunnel("k", echo, "?rate=8").await;
        let data = pattern(4 << 20, 7);
        let t0 = Instant::now();
        let back = round_trip(t.public, &data).await;
        let took = t0.elapsed();
        assert!(back == data, "bytes changed");
        assert!(
            took >= Duration::from_secs(3),
            "4 MiB in {took:?} at rate=8"
        );
    });
}

/// An echo target that counts the connections it accepted.
fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>, Task<()>) {
    let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
    let addr = l.get_ref().local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let task = smol::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            count.fetch_add(1, Relaxed);
            smol::spawn(async move {
                let _ = smol::io::copy(&s, &mut &s).await;
                let _ = s.get_ref().shutdown(std::net::Shutdown::Write);
            })
            .detach();
        }
    });
    (addr, n, task)
}

async fn echo_once(s: &mut Async<TcpStream>, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)
        .or(async {
            Timer::after(WAIT).await;
            panic!("no echo")
        })
        .await
        .unwrap();
    assert_eq!(back, msg);
}

#[test]
fn slot_refuses_beyond_n() {
    smol::block_on(async {
        let (target, accepted, _t) = counting_echo();
        let t = tunnel("k", target, "?slot=2").await;
        let mut u1 = Async::<TcpStream>::connect(t.public).await.unwrap();
        let mut u2 = Async::<TcpStream>::connect(t.public).await.unwrap();
        echo_once(&mut u1, b"one").await;
        echo_once(&mut u2, b"two").await;
        let st = t.server.stats.clone();
        wait_until("2 open", || st.active() == 2).await;
        // The third is closed at once, without reaching the target.
        let mut u3 = Async::<TcpStream>::connect(t.public).await.unwrap();
        let _ = u3.write_all(b"three").await;
        let mut buf = [0u8; 16];
        let n = u3
            .read(&mut buf)
            .or(async {
                Timer::after(WAIT).await;
                panic!("the third connection was not closed")
            })
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "refused connection got bytes");
        assert_eq!(st.refused.load(Relaxed), 1);
        assert_eq!(accepted.load(Relaxed), 2);
        // Closing one frees its slot.
        drop(u1);
        wait_until("a free slot", || st.active() < 2).await;
        let mut u4 = Async::<TcpStream>::connect(t.public).await.unwrap();
        echo_once(&mut u4, b"four").await;
        assert_eq!(accepted.load(Relaxed), 3);
        echo_once(&mut u2, b"still").await;
    });
}
