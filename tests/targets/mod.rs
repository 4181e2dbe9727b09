//! Targets for parity tests: one that records what it receives, and a user that says hi.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use smol::channel::{unbounded, Receiver};
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Task, Timer};

use crate::common::WAIT;

/// What the recording target reports per connection: the peer and every byte it sent.
pub type Seen = Receiver<(SocketAddr, Vec<u8>)>;

/// A target that reads each connection to its end, reports (peer, bytes), answers `done`.
pub fn recording_target(ip: &str) -> (SocketAddr, Seen, Task<()>) {
    let l = Async::<TcpListener>::bind((ip.parse::<IpAddr>().unwrap(), 0)).unwrap();
    let addr = l.get_ref().local_addr().unwrap();
    let (tx, rx) = unbounded();
    let task = smol::spawn(async move {
        loop {
            let Ok((mut s, peer)) = l.accept().await else {
                continue;
            };
            let tx = tx.clone();
            smol::spawn(async move {
                let mut got = Vec::new();
                let _ = s
                    .read_to_end(&mut got)
                    .or(async {
                        Timer::after(WAIT).await;
                        Ok(0)
                    })
                    .await;
                let _ = s.write_all(b"done").await;
                let _ = tx.send((peer, got)).await;
            })
            .detach();
        }
    });
    (addr, rx, task)
}

/// Send `hi` as a user, half-close, expect `done`; returns the user's own address.
pub async fn user_says_hi(public: SocketAddr) -> SocketAddr {
    let mut s = Async::<TcpStream>::connect(public).await.unwrap();
    let me = s.get_ref().local_addr().unwrap();
    s.write_all(b"hi").await.unwrap();
    s.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back)
        .or(async {
            Timer::after(WAIT).await;
            panic!("no answer through the tunnel")
        })
        .await
        .unwrap();
    assert_eq!(back, b"done");
    me
}

pub async fn recv<T>(rx: &Receiver<T>) -> T {
    rx.recv()
        .or(async {
            Timer::after(WAIT).await;
            panic!("the target saw nothing")
        })
        .await
        .unwrap()
}
