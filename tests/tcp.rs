//! TCP through a real server and client on 127.0.0.1:0.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::Async;

const MIB: usize = 1 << 20;

#[test]
fn echo_small() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel("s3cret", target, "").await;
        assert_eq!(round_trip(t.public, b"hello tunnel").await, b"hello tunnel");
    });
}

/// 4 MiB up and the same 4 MiB back down at the same time, compared byte for byte, twice on
/// the same tunnel (the second one on a fresh pool connection).
#[test]
fn four_mib_both_ways_byte_for_byte() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel("s3cret", target, "").await;
        for seed in [1, 2] {
            let data = pattern(4 * MIB, seed);
            let back = round_trip(t.public, &data).await;
            assert_eq!(back.len(), data.len(), "length after 4 MiB echo");
            assert!(back == data, "4 MiB echo differs (seed {seed})");
        }
        // Both legs counted every byte: the server saw 8 MiB each way.
        assert_eq!(t.server.stats.tcp_rx.get(), 8 * MIB as u64);
        assert_eq!(t.server.stats.tcp_tx.get(), 8 * MIB as u64);
    });
}

/// 200 users at once, each with its own bytes; every one gets exactly its own bytes back.
#[test]
fn two_hundred_concurrent_connections() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel("s3cret", target, "").await;
        let users: Vec<_> = (0..200u32)
            .map(|i| {
                let public = t.public;
                smol::spawn(async move {
                    let data = pattern(8192 + i as usize * 17, 1000 + i);
                    let back = round_trip(public, &data).await;
                    (i, back == data, back.len())
                })
            })
            .collect();
        let mut failed = Vec::new();
        for u in users {
            let (i, ok, len) = within(WAIT, u).await.expect("user timed out");
            if !ok {
                failed.push((i, len));
            }
        }
        assert!(
            failed.is_empty(),
            "users with wrong replies (id, bytes): {failed:?}"
        );
        assert_eq!(
            t.server
                .stats
                .refused
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    });
}

/// The user writes its request and shuts down its write side; the target answers only after it
/// has seen that FIN, with 1 MiB; the user still receives all of it.
#[test]
fn half_close_passes_through() {
    smol::block_on(async {
        let reply = pattern(MIB, 77);
        let (target, _t) = reply_after_eof_server(reply.clone());
        let t = tunnel("s3cret", target, "").await;
        let request = b"GET /big HTTP/1.0\r\n\r\n";
        let back = within(WAIT, round_trip(t.public, request))
            .await
            .expect("no reply: was the FIN passed on?");
        assert_eq!(back.len(), request.len() + MIB);
        assert_eq!(&back[..request.len()], request);
        assert!(back[request.len()..] == reply[..], "reply differs");
    });
}

/// `read=300ms`: an idle connection is closed (the user sees EOF), one with traffic every
/// 100 ms stays open for more than three idle periods.
#[test]
fn read_idle_timeout_closes_idle_keeps_active() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel("s3cret", target, "?read=300ms").await;

        let idle_user = smol::spawn({
            let public = t.public;
            async move {
                let mut s = Async::<TcpStream>::connect(public).await.expect("connect");
                s.write_all(b"ping").await.expect("write");
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.expect("echo");
                assert_eq!(&b, b"ping");
                let quiet = Instant::now();
                let mut rest = Vec::new();
                let n = within(Duration::from_secs(5), s.read_to_end(&mut rest))
                    .await
                    .expect("idle connection was not closed within 5 s");
                // EOF, or a reset: either way closed, with nothing more sent.
                assert_eq!(n.unwrap_or(0), 0, "bytes after the idle close");
                quiet.elapsed()
            }
        });

        let mut s = Async::<TcpStream>::connect(t.public)
            .await
            .expect("connect");
        let busy = Instant::now();
        let mut i = 0u8;
        while busy.elapsed() < Duration::from_millis(1200) {
            s.write_all(&[i])
                .await
                .expect("write to an active connection");
            let mut b = [0u8; 1];
            within(Duration::from_secs(5), s.read_exact(&mut b))
                .await
                .expect("active connection stalled")
                .expect("active connection was closed");
            assert_eq!(b[0], i);
            i = i.wrapping_add(1);
            smol::Timer::after(Duration::from_millis(100)).await;
        }

        let quiet = idle_user.await;
        assert!(
            quiet >= Duration::from_millis(250),
            "idle connection closed too early: {quiet:?}"
        );
        // Still usable after 4 idle periods' worth of traffic.
        s.write_all(b"end").await.expect("write");
        let mut b = [0u8; 3];
        s.read_exact(&mut b).await.expect("echo after 1.2 s");
        assert_eq!(&b, b"end");
    });
}
