//! The relay with `tls=1`: devices and visitors learn the mode, every leg is TLS 1.3, and a
//! visitor reaches the device's service through it. A forged `tls` hint does not stick.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::*;
use edgepass::lines::{send, LineReader};
use edgepass::signal::Signal;
use smol::io::AsyncReadExt;
use smol::Async;

#[test]
fn relay_with_tls_carries_visitors_to_devices() {
    smol::block_on(async {
        let relay = start("relay://rk@127.0.0.1:0?tls=1&log=warn").await;
        let addr = relay.tunnel.expect("relay address");
        let (target, _echo) = echo_server();
        let device = start(&format!("client://rk@{addr}/{target}?name=cam-tls")).await;
        let dstats = device.stats.clone();
        wait_until("the device's warm pool", || idle(&dstats) > 0).await;
        let visit = start(&format!("visit://rk@{addr}/127.0.0.1:0?name=cam-tls")).await;
        let local = visit.public.expect("visitor's local listener");
        let data = pattern(256 * 1024, 11);
        let back = within(Duration::from_secs(20), round_trip(local, &data))
            .await
            .expect("echo through the TLS relay");
        assert_eq!(back, data);
    });
}

#[test]
fn relay_tls_port_refuses_plaintext() {
    smol::block_on(async {
        let relay = start("relay://rk@127.0.0.1:0?tls=1&log=warn").await;
        let addr = relay.tunnel.expect("relay address");
        // A plaintext hello is told to use TLS: the relay never speaks the protocol in the clear.
        let mut s = smol::Async::<std::net::TcpStream>::connect(addr)
            .await
            .expect("connect");
        use smol::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"hello reserve 00000000000000000000000000000000\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 64];
        let n = within(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        assert_eq!(&buf[..n], b"tls 1\n");
    });
}

/// The `tls` hint is not authenticated: a visitor told `tls 1` by a fake relay switches, fails,
/// and learns the mode again, so it reaches the plaintext relay that takes the address next.
#[test]
fn a_forged_tls_hint_does_not_stick_to_the_visitor() {
    smol::block_on(async {
        let fake = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
        let addr = fake.get_ref().local_addr().expect("addr");
        let visit = start(&format!("visit://rk@{addr}/127.0.0.1:0?name=cam")).await;
        let local = visit.public.expect("visitor's local listener");
        // The fake answers the plaintext hello with `tls 1`, then drops the TLS attempt.
        let liar = smol::spawn(async move {
            let (mut s, _) = fake.accept().await.expect("accept");
            let _hello = LineReader::new().next(&mut s).await;
            send(&mut s, &Signal::UseTls { mode: 1 })
                .await
                .expect("hint");
            drop(fake.accept().await.expect("accept the TLS attempt"));
        });
        let mut user = Async::<TcpStream>::connect(local).await.expect("connect");
        let mut got = Vec::new();
        let closed = within(WAIT, user.read_to_end(&mut got)).await;
        assert!(
            closed.is_some() && got.is_empty(),
            "no circuit, closed at once"
        );
        within(WAIT, liar)
            .await
            .expect("the fake saw both attempts");

        let relay = start(&format!("relay://rk@{addr}?log=warn")).await;
        let (target, _echo) = echo_server();
        let device = start(&format!("client://rk@{addr}/{target}?name=cam")).await;
        let dstats = device.stats.clone();
        wait_until("the device's warm pool", || idle(&dstats) > 0).await;
        let data = pattern(4096, 12);
        let back = within(WAIT, round_trip(local, &data)).await;
        assert_eq!(back.as_deref(), Some(&data[..]), "the visitor kept tls=1");
        drop(relay);
    });
}
