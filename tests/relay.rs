//! The relay and visit roles on 127.0.0.1:0: reservations by name, limits and their status
//! codes, keys, circuit caps, and devices coming back after a relay restart.
#![cfg(feature = "relay")]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::silent;
use common::*;
use edgepass::auth::{Key, Secret};
use edgepass::handshake;
use edgepass::lines::{send, LineReader};
use edgepass::pending::MAX_PENDING;
use edgepass::relay::RelayStats;
use edgepass::shutdown::Shutdown;
use edgepass::signal::{Kind, Signal};
use edgepass::stream::Conn;
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Task, Timer};

/// A relay running in-process, with its own counters.
struct Relay {
    addr: SocketAddr,
    stats: Arc<RelayStats>,
    stop: Shutdown,
    task: Task<edgepass::error::Result<()>>,
}

impl Relay {
    async fn start(url: &str) -> Relay {
        Relay::start_env(url, &[]).await
    }

    async fn start_env(url: &str, env: &[(&str, &str)]) -> Relay {
        let stop = Shutdown::new();
        let node = edgepass::bind(cfg_env(url, env), stop.clone())
            .await
            .unwrap();
        Relay {
            addr: node.tunnel_addr().unwrap(),
            stats: node.relay_stats().unwrap(),
            stop,
            task: smol::spawn(node.run()),
        }
    }

    fn reservations(&self) -> usize {
        self.stats.reservations.load(Relaxed)
    }

    async fn stop(self) {
        self.stop.trigger();
        self.task.await.unwrap();
    }
}

/// A TCP server that writes `name` to every connection and closes it.
fn name_server(name: &str) -> (SocketAddr, Task<()>) {
    let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
    let addr = l.get_ref().local_addr().unwrap();
    let name = name.as_bytes().to_vec();
    let task = smol::spawn(async move {
        loop {
            if let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(&name).await;
            }
        }
    });
    (addr, task)
}

/// Connect and read until the other side closes (or fails), within [`WAIT`].
async fn fetch(addr: SocketAddr) -> Vec<u8> {
    let mut s = Async::<TcpStream>::connect(addr).await.unwrap();
    let mut out = Vec::new();
    let read = async {
        let _ = s.read_to_end(&mut out).await;
    };
    read.or(async {
        Timer::after(WAIT).await;
        panic!("no end of stream from {addr}");
    })
    .await;
    out
}

/// Send `data`, half-close, read what comes back until the end; errors end the read.
async fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let s = Arc::new(Async::<TcpStream>::connect(addr).await.unwrap());
    let (w, data) = (s.clone(), data.to_vec());
    let writer = smol::spawn(async move {
        let _ = (&*w).write_all(&data).await;
        let _ = w.get_ref().shutdown(std::net::Shutdown::Write);
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + WAIT;
    loop {
        let n = async { (&*s).read(&mut buf).await.unwrap_or(0) }
            .or(async {
                Timer::at(deadline).await;
                panic!("no end of stream from {addr}");
            })
            .await;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    drop(s);
    writer.cancel().await;
    out
}

/// What the relay answered a raw request.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Ok,
    Err(u16),
}

/// Dial the relay and complete the handshake as an honest peer with `key`.
async fn dial(
    relay: SocketAddr,
    key: &str,
    kind: Kind,
) -> edgepass::error::Result<(Conn, LineReader)> {
    let mut conn = Conn::Plain(Async::<TcpStream>::connect(relay).await?);
    let mut lines = LineReader::new();
    let secret = Secret::new(key.as_bytes());
    handshake::connect(&mut conn, &mut lines, &secret, kind, None, 0, None).await?;
    Ok((conn, lines))
}

async fn reply(conn: &mut Conn, lines: &mut LineReader) -> Reply {
    match lines.next(conn).await.unwrap() {
        Signal::Reserved { .. } | Signal::Circuit { .. } => Reply::Ok,
        Signal::Err { code, .. } => Reply::Err(code),
        other => panic!("unexpected {other:?}"),
    }
}

/// Reserve `name` as device `device`; the connection is returned to keep the reservation.
async fn reserve(relay: SocketAddr, key: &str, name: &str, device: u8) -> (Reply, Conn) {
    let (mut conn, mut lines) = dial(relay, key, Kind::Reserve).await.unwrap();
    let sig = Signal::Reserve {
        name,
        device: [device; 16],
    };
    send(&mut conn, &sig).await.unwrap();
    (reply(&mut conn, &mut lines).await, conn)
}

/// Ask for a circuit to `name`.
async fn connect(relay: SocketAddr, key: &str, name: &str) -> Reply {
    let (mut conn, mut lines) = dial(relay, key, Kind::Connect).await.unwrap();
    let sig = Signal::Connect { name, udp: false };
    send(&mut conn, &sig).await.unwrap();
    reply(&mut conn, &mut lines).await
}

/// A peer that answers the challenge with a proof made with `key` (one the relay does not take
/// for `kind`): the relay's answer.
async fn raw_auth(relay: SocketAddr, key: &str, kind: Kind) -> Reply {
    let (s, mut lines, t) = raw_hello(relay, kind).await;
    let mut conn = Conn::Plain(s);
    let proof = t.client_proof(&Key::derive(key.as_bytes(), t.salt), None);
    send(&mut conn, &Signal::Auth { proof, sid: None })
        .await
        .unwrap();
    reply(&mut conn, &mut lines).await
}

async fn device(relay: SocketAddr, key: &str, target: SocketAddr, name: &str) -> Running {
    start(&format!(
        "client://{key}@{relay}/{target}?name={name}&min=1"
    ))
    .await
}

async fn visitor(relay: SocketAddr, key: &str, name: &str) -> Running {
    start(&format!("visit://{key}@{relay}/127.0.0.1:0?name={name}")).await
}

#[test]
fn fifty_devices_each_reached_by_name() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0?max-per-ip=64").await;
        let mut keep = Vec::new();
        for i in 0..50 {
            let name = format!("dev-{i}");
            let (target, t) = name_server(&name);
            keep.push((t, device(relay.addr, "k", target, &name).await));
        }
        wait_until("50 reservations", || relay.reservations() == 50).await;
        let mut visitors = Vec::new();
        for i in 0..50 {
            visitors.push(visitor(relay.addr, "k", &format!("dev-{i}")).await);
        }
        let fetches: Vec<_> = visitors
            .iter()
            .map(|v| smol::spawn(fetch(v.public.unwrap())))
            .collect();
        for (i, f) in fetches.into_iter().enumerate() {
            assert_eq!(f.await, format!("dev-{i}").into_bytes());
        }
    });
}

#[test]
fn reservation_limits_are_refused_with_201() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0?max-reservations=2").await;
        let (a, _ca) = reserve(relay.addr, "k", "a", 1).await;
        let (b, _cb) = reserve(relay.addr, "k", "b", 2).await;
        let (c, _cc) = reserve(relay.addr, "k", "c", 3).await;
        assert_eq!((a, b, c), (Reply::Ok, Reply::Ok, Reply::Err(201)));
        assert_eq!(relay.stats.refused(201), 1);

        let relay = Relay::start("relay://k@127.0.0.1:0?max-per-ip=2&max-reservations=10").await;
        let (a, _ca) = reserve(relay.addr, "k", "a", 1).await;
        let (b, _cb) = reserve(relay.addr, "k", "b", 2).await;
        let (c, _cc) = reserve(relay.addr, "k", "c", 3).await;
        assert_eq!((a, b, c), (Reply::Ok, Reply::Ok, Reply::Err(201)));
        assert_eq!(relay.reservations(), 2);
    });
}

#[test]
fn unknown_name_gives_204_and_the_visitor_closes_at_once() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0").await;
        assert_eq!(connect(relay.addr, "k", "nobody").await, Reply::Err(204));
        let v = visitor(relay.addr, "k", "nobody").await;
        let start = Instant::now();
        assert_eq!(fetch(v.public.unwrap()).await, b"");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(relay.stats.refused(204), 2);
    });
}

/// A `visit` started with the wrong key says so in its log when a user's connection is
/// refused, rather than closing it without a word.
#[test]
fn a_visitor_with_the_wrong_key_logs_why() {
    use common::bin::{spawn, wait_line};
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0").await;
        let url = format!("visit://wrong@{}/127.0.0.1:0?name=cam", relay.addr);
        let (_visit, lines) = spawn(&url, &[]);
        let line = wait_line(&lines, "reaches cam through relay");
        let local: SocketAddr = line
            .split_once("visit: ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no local address in {line:?}"));
        let mut user = Async::<TcpStream>::connect(local).await.expect("connect");
        let mut buf = [0u8; 1];
        let read = within(WAIT, user.read(&mut buf)).await;
        assert!(
            matches!(read, Some(Ok(0)) | Some(Err(_))),
            "closed: {read:?}"
        );
        let why = wait_line(&lines, "no circuit to cam");
        assert!(why.contains("(202), wrong key?"), "{why}");
    });
}

/// A tunnel client (no `name=`) pointed at a relay is told what it probably missed.
#[test]
fn a_client_without_name_at_a_relay_is_told_why() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0").await;
        let url = format!("client://k@{}/127.0.0.1:22", relay.addr);
        let (_client, lines) = common::bin::spawn(&url, &[]);
        let why = common::bin::wait_line(&lines, "cannot open a session");
        assert!(why.contains("(401) (is it a relay?"), "{why}");
    });
}

#[test]
fn wrong_key_gives_202() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0").await;
        assert_eq!(
            raw_auth(relay.addr, "wrong", Kind::Reserve).await,
            Reply::Err(202)
        );
        assert_eq!(
            raw_auth(relay.addr, "wrong", Kind::Connect).await,
            Reply::Err(202)
        );
        // The relay counts a failed handshake after it has answered: wait for the count.
        wait_until("two 202s counted", || relay.stats.refused(202) == 2).await;
        // An honest peer with the wrong key is told so, and gets no proof from the relay.
        let e = dial(relay.addr, "wrong", Kind::Reserve)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("(202), wrong key?"), "{e}");
        wait_until("three 202s counted", || relay.stats.refused(202) == 3).await;
        // A plain tunnel client (no name=) is told at once that `ctl` is not served here.
        let e = dial(relay.addr, "k", Kind::Ctl).await.err().unwrap();
        assert!(e.to_string().contains("(401)"), "{e}");
        wait_until("one 401 counted", || relay.stats.refused(401) == 1).await;
    });
}

#[test]
fn visit_key_cannot_reserve() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0?visit-key=vk").await;
        assert_eq!(
            raw_auth(relay.addr, "vk", Kind::Reserve).await,
            Reply::Err(202)
        );
        assert!(dial(relay.addr, "vk", Kind::Reserve).await.is_err());
        assert_eq!(relay.reservations(), 0);
        // Devices use the relay key, visitors the visit key, and not the other way round.
        let (target, _t) = name_server("cam");
        let _d = device(relay.addr, "k", target, "cam").await;
        wait_until("the reservation", || relay.reservations() == 1).await;
        let v = visitor(relay.addr, "vk", "cam").await;
        assert_eq!(fetch(v.public.unwrap()).await, b"cam");
        assert_eq!(
            raw_auth(relay.addr, "k", Kind::Connect).await,
            Reply::Err(202)
        );
    });
}

#[test]
fn a_held_name_is_refused_and_freed_when_its_holder_goes() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0").await;
        let (target, _t) = name_server("cam");
        let holder = device(relay.addr, "k", target, "cam").await;
        wait_until("the reservation", || relay.reservations() == 1).await;
        let (r, _c) = reserve(relay.addr, "k", "cam", 9).await;
        assert_eq!(r, Reply::Err(200));
        assert_eq!(relay.stats.refused(200), 1);
        // The holder's control connection closes: the name is free right away.
        holder.stop.trigger();
        holder.task.await.unwrap();
        wait_until("the release", || relay.reservations() == 0).await;
        let (r, c9) = reserve(relay.addr, "k", "cam", 9).await;
        assert_eq!(r, Reply::Ok);
        // The same device (same id) takes its own name over, e.g. after a NAT change.
        let (r, _c9b) = reserve(relay.addr, "k", "cam", 9).await;
        assert_eq!(r, Reply::Ok);
        assert_eq!(relay.reservations(), 1);
        drop(c9);
    });
}

#[test]
fn the_byte_cap_cuts_a_circuit() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0?circuit-bytes=1000").await;
        let (target, _echo) = echo_server();
        let _d = device(relay.addr, "k", target, "echo").await;
        wait_until("the reservation", || relay.reservations() == 1).await;
        let v = visitor(relay.addr, "k", "echo").await;
        let small = pattern(600, 1);
        assert_eq!(exchange(v.public.unwrap(), &small).await, small);
        let big = pattern(100_000, 2);
        let got = exchange(v.public.unwrap(), &big).await;
        assert!(
            got.len() <= 1000,
            "{} bytes passed a 1000-byte cap",
            got.len()
        );
        assert_eq!(got, big[..got.len()]);
    });
}

#[test]
fn devices_come_back_after_a_relay_restart() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0").await;
        let addr = relay.addr;
        let mut keep = Vec::new();
        for i in 0..5 {
            let name = format!("d{i}");
            let (target, t) = name_server(&name);
            keep.push((t, device(addr, "k", target, &name).await));
        }
        wait_until("5 reservations", || relay.reservations() == 5).await;
        relay.stop().await;
        let relay = Relay::start(&format!("relay://k@{addr}")).await;
        wait_until("5 reservations again", || relay.reservations() == 5).await;
        for i in 0..5 {
            let v = visitor(addr, "k", &format!("d{i}")).await;
            assert_eq!(fetch(v.public.unwrap()).await, format!("d{i}").into_bytes());
        }
    });
}

#[test]
fn refreshed_reservations_live_and_silent_ones_lapse() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0?ttl=1s").await;
        let (target, _t) = name_server("cam");
        let _d = device(relay.addr, "k", target, "cam").await;
        wait_until("the reservation", || relay.reservations() == 1).await;
        // A raw reservation that never sends `refresh` lapses after the ttl.
        let (r, mut silent) = reserve(relay.addr, "k", "silent", 7).await;
        assert_eq!(r, Reply::Ok);
        wait_until("two reservations", || relay.reservations() == 2).await;
        let start = Instant::now();
        wait_until("the silent one to lapse", || relay.reservations() == 1).await;
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // Its control connection was closed by the relay.
        let mut buf = [0u8; 512];
        let mut closed = false;
        while !closed {
            closed = matches!(silent.read(&mut buf).await, Ok(0) | Err(_));
        }
        // The device refreshes every ttl/2 and is still reachable well past the ttl.
        Timer::after(Duration::from_millis(1500)).await;
        assert_eq!(relay.reservations(), 1);
        let v = visitor(relay.addr, "k", "cam").await;
        assert_eq!(fetch(v.public.unwrap()).await, b"cam");
    });
}

#[test]
fn connection_and_circuit_limits() {
    smol::block_on(async {
        // Over max-conns, with no handshake pending to make room, a new connection reads
        // `err 201` and is closed.
        let relay = Relay::start("relay://k@127.0.0.1:0?max-conns=2").await;
        let (r, _c) = reserve(relay.addr, "k", "a", 1).await;
        assert_eq!(r, Reply::Ok);
        let (r, _c2) = reserve(relay.addr, "k", "b", 1).await;
        assert_eq!(r, Reply::Ok);
        wait_until("two connections", || relay.stats.conns.load(Relaxed) == 2).await;
        let e = dial(relay.addr, "k", Kind::Connect).await.err().unwrap();
        assert!(e.to_string().contains("(201)"), "{e}");

        // One circuit per reservation: the second visitor is refused while the first is open.
        let relay = Relay::start("relay://k@127.0.0.1:0?max-circuits=1").await;
        let (target, _echo) = echo_server();
        let _d = device(relay.addr, "k", target, "echo").await;
        wait_until("the reservation", || relay.reservations() == 1).await;
        let v = visitor(relay.addr, "k", "echo").await;
        let mut first = Async::<TcpStream>::connect(v.public.unwrap())
            .await
            .unwrap();
        first.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(connect(relay.addr, "k", "echo").await, Reply::Err(201));
        drop(first);
    });
}

#[test]
fn the_duration_cap_cuts_a_circuit() {
    smol::block_on(async {
        let relay = Relay::start("relay://k@127.0.0.1:0?circuit-duration=1s").await;
        let (target, _echo) = echo_server();
        let _d = device(relay.addr, "k", target, "echo").await;
        wait_until("the reservation", || relay.reservations() == 1).await;
        let v = visitor(relay.addr, "k", "echo").await;
        let mut s = Async::<TcpStream>::connect(v.public.unwrap())
            .await
            .unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        let start = Instant::now();
        // The circuit stays silent and open on both ends: only the cap can end it.
        let _ = async { s.read(&mut buf).await }
            .or(async {
                Timer::after(WAIT).await;
                panic!("the circuit outlived its cap");
            })
            .await;
        let took = start.elapsed();
        assert!(took > Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    });
}

#[test]
fn silent_connections_do_not_lock_devices_and_visitors_out() {
    smol::block_on(async {
        // Without eviction the silent ones would hold every pending slot for a minute.
        let env = &[("HANDSHAKE_TIMEOUT", "60s")];
        let relay = Relay::start_env("relay://k@127.0.0.1:0", env).await;
        let _silent = silent(relay.addr, MAX_PENDING).await;
        wait_until("every silent connection accepted", || {
            relay.stats.conns.load(Relaxed) == MAX_PENDING
        })
        .await;
        // Each of the device's and the visitor's connections closes the oldest silent one.
        let start = Instant::now();
        let (target, _t) = name_server("cam");
        let _d = device(relay.addr, "k", target, "cam").await;
        wait_until("the reservation", || relay.reservations() == 1).await;
        let v = visitor(relay.addr, "k", "cam").await;
        assert_eq!(fetch(v.public.unwrap()).await, b"cam");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
    });
}

/// The same at `max-conns`: silent connections that fill every connection the relay allows
/// are closed, oldest first, for devices and visitors, instead of turning them away with 201.
#[test]
fn silent_connections_at_max_conns_make_room() {
    /// Below `MAX_PENDING`: every silent one is still pending when the limit is reached.
    const LIMIT: usize = 40;
    smol::block_on(async {
        let env = &[("HANDSHAKE_TIMEOUT", "60s")];
        let url = format!("relay://k@127.0.0.1:0?max-conns={LIMIT}");
        let relay = Relay::start_env(&url, env).await;
        let _silent = silent(relay.addr, LIMIT).await;
        wait_until("every silent connection accepted", || {
            relay.stats.conns.load(Relaxed) == LIMIT
        })
        .await;
        let (target, _t) = name_server("cam");
        let _d = device(relay.addr, "k", target, "cam").await;
        wait_until("the reservation", || relay.reservations() == 1).await;
        let v = visitor(relay.addr, "k", "cam").await;
        assert_eq!(fetch(v.public.unwrap()).await, b"cam");
        assert_eq!(relay.stats.refused(201), 0, "nobody turned away");
        wait_until("back within the limit", || {
            relay.stats.conns.load(Relaxed) <= LIMIT
        })
        .await;
    });
}
