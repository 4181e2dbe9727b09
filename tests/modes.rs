//! Client modes: `mode=1` single-end forwarding (TCP and UDP, no server) and `mode=0` choosing
//! between single-end and tunnel client as NodePass does.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::udp::{echo_and_udp_sink, tcp_is_served_during_a_flood, udp_echo};
use common::*;
use smol::Async;

async fn udp_round_trip(to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let s = Async::<UdpSocket>::bind(([127, 0, 0, 1], 0)).expect("bind user");
    s.send_to(data, to).await.expect("send");
    let mut buf = vec![0u8; 65536];
    let (n, _) = within(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .expect("a reply within 5 s")
        .expect("recv");
    buf.truncate(n);
    buf
}

#[test]
fn mode_1_forwards_tcp_and_udp_without_a_server() {
    smol::block_on(async {
        let (tcp_target, _t) = echo_server();
        let (udp_target, _u) = udp_echo();
        // TCP and UDP echo on different ports: forward to each with its own forwarder.
        let fwd = start(&format!("client://127.0.0.1:0/{tcp_target}?mode=1")).await;
        let addr = fwd.public.expect("listen address");
        let data = pattern(256 * 1024, 7);
        assert_eq!(round_trip(addr, &data).await, data);
        assert!(fwd.stats.tcp_rx.get() >= data.len() as u64);

        let fwd_u = start(&format!("client://127.0.0.1:0/{udp_target}?mode=1")).await;
        let uaddr = fwd_u.public.expect("listen address");
        for size in [1usize, 1400, 65507] {
            let d = pattern(size, size as u32);
            assert_eq!(udp_round_trip(uaddr, &d).await, d, "{size}-byte datagram");
        }
        assert_eq!(
            fwd_u
                .stats
                .udp_active
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    });
}

#[test]
fn mode_1_fails_over_to_the_next_target() {
    smol::block_on(async {
        let (up, _t) = echo_server();
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let fwd = start(&format!("client://127.0.0.1:0/{down},{up}?mode=1")).await;
        let addr = fwd.public.expect("listen address");
        for i in 0..4 {
            assert_eq!(round_trip(addr, b"hi").await, b"hi", "connection {i}");
        }
    });
}

/// New UDP sources beyond `slot` are dropped even when their datagrams all wait in the socket
/// at once: a flow counts from the datagram that makes it, not from when its task first runs.
#[test]
fn mode_1_a_burst_of_new_udp_sources_makes_at_most_slot_flows() {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::mpsc::sync_channel;
    /// Sources in the burst; their 1-byte datagrams fit the socket's receive buffer.
    const SOURCES: usize = 100;
    smol::block_on(async {
        let (target, _u) = udp_echo();
        let fwd = start(&format!("client://127.0.0.1:0/{target}?mode=1&slot=2")).await;
        let to = fwd.public.expect("listen address");
        // Hold the roles' runtime thread while the burst is sent, so the forwarder finds every
        // datagram waiting when it reads the first.
        let (entered_tx, entered) = sync_channel(1);
        let (release, released) = sync_channel::<()>(1);
        let gate = edgepass::rt::spawn(async move {
            let _ = entered_tx.send(());
            let _ = released.recv_timeout(WAIT);
        });
        entered
            .recv_timeout(WAIT)
            .expect("the runtime thread is held");
        let users: Vec<UdpSocket> = (0..SOURCES)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind user"))
            .collect();
        for u in &users {
            u.send_to(b"x", to).expect("send");
        }
        release.send(()).expect("let the runtime go");
        gate.await;
        let stats = fwd.stats.clone();
        // Every datagram is forwarded (one byte each) or dropped.
        let handled = || stats.udp_rx.get() + stats.udp_dropped.load(Relaxed) as u64;
        wait_until("every datagram handled", || handled() >= SOURCES as u64).await;
        assert_eq!(stats.udp_rx.get(), 2, "the first two sources got a flow");
        assert_eq!(stats.udp_dropped.load(Relaxed), SOURCES - 2);
        assert_eq!(stats.refused.load(Relaxed), SOURCES - 2, "refusals counted");
        assert!(stats.active() <= 2, "{} flows open", stats.active());
    });
}

/// A UDP flood through a single-end forwarder leaves its TCP side working: the receive loop
/// yields every few datagrams, where a socket that always has one waiting would otherwise
/// keep the runtime thread to itself.
#[test]
fn mode_1_tcp_is_served_during_a_udp_flood() {
    smol::block_on(async {
        let Some((target, _t, _sink)) = echo_and_udp_sink() else {
            eprintln!("skip: the target's UDP port is taken");
            return;
        };
        let url = format!("client://127.0.0.1:0/{target}?mode=1");
        let fwd = start_cfg_on(cfg(&url), true).await;
        let to = fwd.public.expect("listen address");
        tcp_is_served_during_a_flood(to, &fwd.stats).await;
    });
}

#[test]
fn mode_0_forwards_locally_when_the_tunnel_address_binds() {
    smol::block_on(async {
        let (target, _t) = echo_server();
        // 127.0.0.1:0 can always be bound here: NodePass's auto mode picks single-end.
        let fwd = start(&format!("client://127.0.0.1:0/{target}")).await;
        let addr = fwd.public.expect("single-end mode has a listen address");
        assert_eq!(round_trip(addr, b"auto").await, b"auto");
    });
}

#[test]
fn mode_0_is_a_tunnel_client_when_a_server_holds_the_address() {
    smol::block_on(async {
        let (target, _t) = echo_server();
        // tunnel() starts the server first, so the client cannot bind its address.
        let t = tunnel("k", target, "").await;
        assert!(
            t.client.public.is_none(),
            "a tunnel client listens on nothing"
        );
        assert_eq!(round_trip(t.public, b"dual").await, b"dual");
    });
}

#[test]
fn mode_1_on_a_taken_address_fails_at_start() {
    smol::block_on(async {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let url = format!("client://{addr}/127.0.0.1:9?mode=1");
        let res = edgepass::bind(cfg(&url), edgepass::shutdown::Shutdown::new()).await;
        assert!(res.is_err(), "binding a taken address must fail");
    });
}

/// A port that was free a moment ago (the client binds it itself in forward flow).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Poll until `addr` accepts TCP connections (bounded by `WAIT`).
async fn wait_listening(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + WAIT;
    while smol::Async::<std::net::TcpStream>::connect(addr)
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} never listened"
        );
        smol::Timer::after(Duration::from_millis(20)).await;
    }
}

/// Forward flow: users connect to the client, the server dials the target.
async fn forward_flow(server_query: &str, target: SocketAddr) -> (Running, Running, SocketAddr) {
    let server = start(&format!("server://fk@127.0.0.1:0/{target}{server_query}")).await;
    assert!(
        server.public.is_none(),
        "a forward-flow server listens for no users"
    );
    let tunnel = server.tunnel.expect("tunnel");
    let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let client = start(&format!("client://fk@{tunnel}/{local}")).await;
    wait_listening(local).await;
    (server, client, local)
}

#[test]
fn mode_2_server_dials_the_target_and_the_client_accepts_users() {
    smol::block_on(async {
        let (target, _t) = echo_server();
        let (server, client, local) = forward_flow("?mode=2", target).await;
        let data = pattern(1 << 20, 3);
        assert_eq!(round_trip(local, &data).await, data);
        // Many users at once, each on its own pool connection.
        let tasks: Vec<_> = (0..50u32)
            .map(|i| {
                smol::spawn(async move {
                    let d = pattern(10_000, i);
                    assert_eq!(round_trip(local, &d).await, d, "user {i}");
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        assert!(
            server.stats.tcp_rx.get() > 0,
            "the server carried the bytes to the target"
        );
        assert!(client.stats.tcp_rx.get() > 0);
    });
}

#[test]
fn mode_0_server_picks_forward_flow_when_the_target_address_is_taken() {
    smol::block_on(async {
        // The target itself holds the address, so the server cannot listen there.
        let (target, _t) = echo_server();
        let (_server, _client, local) = forward_flow("", target).await;
        assert_eq!(round_trip(local, b"auto forward").await, b"auto forward");
    });
}

#[test]
fn mode_2_carries_udp() {
    smol::block_on(async {
        let (target, _u) = udp_echo();
        // The UDP echo holds only the UDP port; the server must not listen there anyway.
        let (_server, _client, local) = forward_flow("?mode=2", target).await;
        for size in [1usize, 1400, 65507] {
            let d = pattern(size, size as u32);
            assert_eq!(udp_round_trip(local, &d).await, d, "{size}-byte datagram");
        }
    });
}
