//! UDP through a relay on 127.0.0.1:0: a visitor's flows reach the device's UDP target, one
//! circuit per flow, under the circuit limits, and closed when the flow expires.
#![cfg(all(feature = "relay", feature = "udp"))]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::udp::*;
use common::*;
use edgepass::stats::Stats;

/// A relay, a device named `dev` forwarding to `target` (its pool warm), and a visitor of
/// `dev`; `relay_q`, `device_q` and `visit_q` are appended to the URLs (`&...`).
struct Setup {
    relay: Running,
    device: Running,
    visitor: Running,
    /// The visitor's local address, TCP and UDP.
    local: SocketAddr,
}

async fn setup(target: SocketAddr, (relay_q, device_q, visit_q): (&str, &str, &str)) -> Setup {
    setup_env(target, (relay_q, device_q, visit_q), &[]).await
}

async fn setup_env(
    target: SocketAddr,
    (relay_q, device_q, visit_q): (&str, &str, &str),
    visit_env: &[(&str, &str)],
) -> Setup {
    let relay = start(&format!("relay://k@127.0.0.1:0?max-circuits=16{relay_q}")).await;
    let addr = relay.tunnel.expect("relay addr");
    let url = format!("client://k@{addr}/{target}?name=dev&min=2{device_q}");
    let device = start(&url).await;
    let stats = device.stats.clone();
    wait_until("the device's warm pool", || idle(&stats) > 0).await;
    let url = format!("visit://k@{addr}/127.0.0.1:0?name=dev{visit_q}");
    let visitor = start_env(&url, visit_env).await;
    let local = visitor.public.expect("visitor addr");
    Setup {
        relay,
        device,
        visitor,
        local,
    }
}

/// Circuits (TCP + UDP) open on the relay, or flows open on a device or visitor.
fn open(stats: &Stats) -> usize {
    stats.active()
}

#[test]
fn datagrams_of_every_size_cross_the_relay_both_ways() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        let s = setup(target, ("", "", "")).await;
        let u = user(s.local);
        for (i, len) in [1usize, 1400, 65_507, 0, 2, 1400, 65_507, 1]
            .into_iter()
            .enumerate()
        {
            echo(&u, &pattern(len, i as u32), &format!("datagram {i}")).await;
        }
        // One source is one flow on one circuit, and the device served it as a UDP flow.
        assert_eq!(open(&s.relay.stats), 1, "circuits on the relay");
        assert_eq!(s.relay.stats.udp_active.load(Relaxed), 1);
        assert_eq!(s.device.stats.udp_active.load(Relaxed), 1);
        assert!(s.visitor.stats.udp_rx.get() >= 2 * (65_507 + 1400 + 1));
        s.visitor.stop().await;
        s.device.stop().await;
        s.relay.stop().await;
    });
}

#[test]
fn two_sources_get_their_own_replies_on_their_own_circuits() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        let s = setup(target, ("", "", "")).await;
        let (a, b) = (user(s.local), user(s.local));
        for round in 0..5u32 {
            // Both in flight at once: each source must get back its own datagram only.
            let (da, db) = (pattern(100, round), pattern(300, round + 100));
            a.send(&da).await.unwrap();
            b.send(&db).await.unwrap();
            let mut buf = vec![0u8; 2048];
            let n = recv(&a, &mut buf, REPLY_WAIT).await.expect("reply to a");
            assert!(buf[..n] == da[..], "a got someone else's reply");
            let n = recv(&b, &mut buf, REPLY_WAIT).await.expect("reply to b");
            assert!(buf[..n] == db[..], "b got someone else's reply");
        }
        let relay = s.relay.stats.clone();
        wait_until("two circuits", || open(&relay) == 2).await;
        assert_eq!(s.visitor.stats.udp_active.load(Relaxed), 2);
    });
}

#[test]
fn an_expired_flow_closes_its_circuit() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        // Only the visitor expires flows early: the circuit must close from its side.
        let env = [("UDP_READ_TIMEOUT", "300ms")];
        let s = setup_env(target, ("", "", ""), &env).await;
        let u = user(s.local);
        echo(&u, b"hello", "first").await;
        let start = Instant::now();
        assert_eq!(open(&s.relay.stats), 1);
        let (relay, device) = (s.relay.stats.clone(), s.device.stats.clone());
        let visitor = s.visitor.stats.clone();
        wait_until("the circuit closed", || {
            open(&relay) == 0 && open(&device) == 0 && open(&visitor) == 0
        })
        .await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
        // The next datagram from the same source starts a new flow on a new circuit.
        echo(&u, b"again", "after expiry").await;
        assert_eq!(open(&relay), 1);
    });
}

#[test]
fn the_byte_cap_cuts_a_udp_circuit() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        // 1002 B per frame: the third reply crosses the 3000 B cap (device → visitor).
        let s = setup(target, ("&circuit-bytes=3000", "", "")).await;
        let u = user(s.local);
        echo(&u, &pattern(1000, 1), "first").await;
        echo(&u, &pattern(1000, 2), "second").await;
        u.send(&pattern(1000, 3)).await.unwrap();
        let (relay, visitor) = (s.relay.stats.clone(), s.visitor.stats.clone());
        wait_until("the circuit cut", || {
            open(&relay) == 0 && open(&visitor) == 0
        })
        .await;
        // The third reply arrived cut short, so it never left the visitor as a datagram.
        let mut buf = [0u8; 2048];
        let got = u.get_ref().recv(&mut buf);
        assert!(got.is_err(), "a reply past the cap: {got:?}");
    });
}

#[test]
fn noudp_turns_udp_off_on_either_end() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        // A visitor with noudp=1 binds no UDP socket: the port is free for anyone.
        let s = setup(target, ("", "", "&noudp=1")).await;
        let taken = UdpSocket::bind(s.local);
        assert!(taken.is_ok(), "the visitor bound UDP: {taken:?}");
        drop(taken);

        // A device with noudp=1 refuses the flow: the circuit closes, no reply comes back.
        let s = setup(target, ("", "&noudp=1", "")).await;
        let u = user(s.local);
        u.send(b"anyone?").await.unwrap();
        let device = s.device.stats.clone();
        wait_until("the device's refusal", || device.refused.load(Relaxed) == 1).await;
        let (relay, visitor) = (s.relay.stats.clone(), s.visitor.stats.clone());
        wait_until("the circuit closed", || {
            open(&relay) == 0 && open(&visitor) == 0
        })
        .await;
        let mut buf = [0u8; 64];
        assert_eq!(recv(&u, &mut buf, Duration::from_millis(100)).await, None);
    });
}

#[cfg(feature = "tls")]
#[test]
fn udp_crosses_a_tls_relay() {
    smol::block_on(async {
        let (target, _echo) = udp_echo();
        // The visitor learns tls=1 on its first flow's dial and retries in TLS.
        let s = setup(target, ("&tls=1", "", "")).await;
        let u = user(s.local);
        for (i, len) in [1usize, 1400, 65_507].into_iter().enumerate() {
            echo(&u, &pattern(len, 50 + i as u32), "through TLS").await;
        }
        assert_eq!(open(&s.relay.stats), 1, "one UDP circuit");
    });
}

/// Datagrams for a name the relay refuses do not each cost the relay a handshake: after a
/// failed circuit, new flows wait a second (doubling while they keep failing) before dialing.
#[test]
fn a_refused_name_is_not_redialed_for_every_datagram() {
    /// Datagrams sent, each once the one before has been refused.
    const SENT: usize = 20;
    smol::block_on(async {
        let stop = edgepass::shutdown::Shutdown::new();
        let node = edgepass::bind(cfg("relay://k@127.0.0.1:0"), stop.clone())
            .await
            .expect("bind the relay");
        let addr = node.tunnel_addr().expect("relay addr");
        let relay = node.relay_stats().expect("relay stats");
        let _relay = smol::spawn(node.run());
        let visitor = start(&format!("visit://k@{addr}/127.0.0.1:0?name=nope")).await;
        let to = visitor.public.expect("visitor addr");
        let stats = visitor.stats.clone();
        let user = UdpSocket::bind("127.0.0.1:0").expect("bind user");
        let started = Instant::now();
        for i in 1..=SENT {
            user.send_to(b"q", to).expect("send");
            wait_until("the datagram's flow refused", || {
                stats.refused.load(Relaxed) >= i
            })
            .await;
        }
        // The holds last at least 0.75 s, 1.5 s, 3 s, ...: a slow run may see some of them
        // end, each letting one more circuit be asked for.
        let asked = relay.refused(204);
        let (mut most, mut held, mut hold) = (1, Duration::ZERO, Duration::from_millis(750));
        while held + hold <= started.elapsed() {
            (most, held, hold) = (most + 1, held + hold, hold * 2);
        }
        assert!(
            (1..=most).contains(&asked),
            "{asked} circuits asked for {SENT} datagrams in {:?}",
            started.elapsed()
        );
    });
}
