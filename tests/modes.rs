//! Client modes: `mode=1` single-end forwarding (TCP and UDP, no server) and `mode=0` choosing
//! between single-end and tunnel client as NodePass does.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use smol::{Async, Task};

/// A UDP echo target on 127.0.0.1:0.
fn udp_echo() -> (SocketAddr, Task<()>) {
    let s = Async::<UdpSocket>::bind(([127, 0, 0, 1], 0)).expect("bind udp echo");
    let addr = s.get_ref().local_addr().expect("addr");
    let task = smol::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    (addr, task)
}

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
