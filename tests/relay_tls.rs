//! The relay with `tls=1`: devices and visitors learn the mode, every leg is TLS 1.3, and a
//! visitor reaches the device's service through it.

mod common;

use std::time::Duration;

use common::*;

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
