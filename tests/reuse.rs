//! Reusable pool connections (`tcpr`, chunked): real roles on 127.0.0.1:0 carry one user after
//! another on the same pool connections, with half-closes, aborts and both flows.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::procfs::ports_connected_to;
use common::*;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::Async;

/// Reuse for every pool connection, plain ones too.
const ALWAYS: &[(&str, &str)] = &[("POOL_REUSE", "2")];

fn reused(r: &Running) -> usize {
    r.stats.pool_reused.load(Relaxed)
}

/// `n` users one after another, each echoing a different size (0 bytes to 64 KiB).
async fn users_in_a_row(public: SocketAddr, n: u32) {
    for i in 0..n {
        let len = [0, 1, 100, 16_383, 16_384, 65_536][i as usize % 6];
        let data = pattern(len, i);
        assert!(
            round_trip(public, &data).await == data,
            "user {i} ({len} B)"
        );
    }
}

#[test]
fn plain_users_in_a_row_ride_the_same_pool_connections() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel_env("k", target, "?min=2&max=4", ALWAYS).await;
        users_in_a_row(t.public, 60).await;
        // Each user's pool connection went back to the queue after it.
        wait_until("every pool connection back", || reused(&t.server) == 60).await;
        // The client never needed more than its small pool: no connection per user.
        assert!(t.client.stats.pool_size.load(Relaxed) <= 4);
        wait_until("users closed", || t.server.stats.active() == 0).await;
        wait_until("targets closed", || t.client.stats.active() == 0).await;
        assert_eq!(t.server.stats.tcp_rx.get(), t.client.stats.tcp_rx.get());
    });
}

/// After a burst the pool shrinks back to `min` by closing the connections dialed last: the
/// ones from before the burst keep serving, so the heap pages the burst's connections used
/// hold nothing any more and go back to the system.
#[test]
fn after_a_burst_the_pool_keeps_the_connections_from_before_it() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel_env("k", target, "?min=2&max=16", ALWAYS).await;
        let tunnel_port = t.server.tunnel.expect("tunnel addr").port();
        // The client's control connection and its two pool connections.
        wait_until("the warm pool", || {
            idle(&t.server.stats) == 2 && ports_connected_to(tunnel_port).len() == 3
        })
        .await;
        let before = ports_connected_to(tunnel_port);
        // Eight users held at once: the pool runs dry, doubles and dials.
        let mut users = Vec::new();
        for i in 0..8u32 {
            users.push(echo_once(t.public, &pattern(100, i)).await);
        }
        assert!(ports_connected_to(tunnel_port).len() > 3, "the pool grew");
        // Closed in the order they came: the first users' (the oldest) connections come
        // back to the queue first.
        let reused_before = reused(&t.server);
        for (i, u) in users.into_iter().enumerate() {
            drop(u);
            wait_until("the connection back in the queue", || {
                reused(&t.server) == reused_before + i + 1
            })
            .await;
        }
        wait_until("users closed", || t.server.stats.active() == 0).await;
        wait_until("the pool back to min", || {
            idle(&t.server.stats) == 2 && ports_connected_to(tunnel_port).len() == 3
        })
        .await;
        assert_eq!(
            ports_connected_to(tunnel_port),
            before,
            "the control connection and the pool connections from before the burst"
        );
    });
}

#[test]
fn no_reuse_when_off() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel_env("k", target, "", &[("POOL_REUSE", "0")]).await;
        users_in_a_row(t.public, 6).await;
        assert_eq!(reused(&t.server), 0);
    });
}

#[test]
fn a_half_close_crosses_a_reused_connection() {
    smol::block_on(async {
        // The target answers only after the user's end of input has crossed.
        let (target, _t) = reply_after_eof_server(b" -- answered after EOF".to_vec());
        let t = tunnel_env("k", target, "?min=1&max=2", ALWAYS).await;
        for i in 0..20u32 {
            let req = pattern(3000, i);
            let mut want = req.clone();
            want.extend_from_slice(b" -- answered after EOF");
            assert!(round_trip(t.public, &req).await == want, "user {i}");
        }
        wait_until("pool connections back", || reused(&t.server) == 20).await;
    });
}

#[test]
fn a_user_reset_drops_its_pool_connection_and_nothing_else() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel_env("k", target, "?min=2&max=4", ALWAYS).await;
        users_in_a_row(t.public, 3).await;
        wait_until("3 back", || reused(&t.server) == 3).await;
        // A user that sends, then resets (SO_LINGER 0) instead of closing.
        let mut s = Async::<TcpStream>::connect(t.public)
            .await
            .expect("connect");
        s.write_all(&pattern(5000, 9)).await.expect("write");
        s.flush().await.expect("flush");
        rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO)).expect("linger");
        drop(s);
        // Its pool connection is closed, not reused; both ends let go of their legs.
        wait_until("user gone", || t.server.stats.active() == 0).await;
        wait_until("target gone", || t.client.stats.active() == 0).await;
        assert_eq!(reused(&t.server), 3);
        // The tunnel carries the next users as before.
        users_in_a_row(t.public, 6).await;
        wait_until("6 more back", || reused(&t.server) == 9).await;
    });
}

#[test]
fn concurrent_users_grow_the_pool_and_come_back() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel_env("k", target, "?min=2&max=64", ALWAYS).await;
        for round in 0..3u32 {
            let users: Vec<_> = (0..40u32)
                .map(|i| {
                    let public = t.public;
                    smol::spawn(async move {
                        let d = pattern(20_000, round * 100 + i);
                        assert!(round_trip(public, &d).await == d, "user {i}");
                    })
                })
                .collect();
            for u in users {
                u.await;
            }
        }
        wait_until("users closed", || t.server.stats.active() == 0).await;
        // Connections that came back while the queue was full were closed: it holds at most max.
        assert!(idle(&t.server.stats) <= 64);
        assert!(reused(&t.server) > 0, "some came back");
        let before = reused(&t.server);
        users_in_a_row(t.public, 6).await;
        wait_until("6 more back", || reused(&t.server) == before + 6).await;
    });
}

#[test]
fn more_users_held_open_than_the_pool_max() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel_env("k", target, "?min=2&max=4", ALWAYS).await;
        // 24 users at once, each echoes and stays open: busy connections must not stop the
        // pool from dialing more (they count for at most half of it).
        let mut open = Vec::new();
        for i in 0..24u32 {
            let mut s = Async::<TcpStream>::connect(t.public)
                .await
                .expect("connect");
            let d = pattern(100, i);
            s.write_all(&d).await.expect("write");
            let mut got = vec![0; d.len()];
            within(WAIT, s.read_exact(&mut got))
                .await
                .unwrap_or_else(|| panic!("user {i} got no echo"))
                .expect("read");
            assert!(got == d, "user {i}");
            open.push(s);
        }
        wait_until("24 open", || t.server.stats.tcp_active.load(Relaxed) == 24).await;
        drop(open);
        wait_until("all closed", || t.server.stats.active() == 0).await;
        wait_until("targets closed", || t.client.stats.active() == 0).await;
        // The queue keeps at most max=4: what came back beyond that was closed.
        assert!(idle(&t.server.stats) <= 4);
        let before = reused(&t.server);
        users_in_a_row(t.public, 6).await;
        wait_until("6 more back", || reused(&t.server) == before + 6).await;
    });
}

#[test]
fn forward_flow_reuses_the_clients_queue() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let server = start_cfg(cfg_env(
            &format!("server://fk@127.0.0.1:0/{target}?mode=2"),
            ALWAYS,
        ))
        .await;
        let tunnel = server.tunnel.expect("tunnel");
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let local = l.local_addr().expect("addr");
        drop(l);
        let client = start_cfg(cfg_env(&format!("client://fk@{tunnel}/{local}"), ALWAYS)).await;
        // The client queues pool connections for its own users once the session is up.
        wait_until("a warm queue", || idle(&client.stats) > 0).await;
        users_in_a_row(local, 12).await;
        // Here the client is the taker: its queue gets the connections back.
        wait_until("12 back", || reused(&client) == 12).await;
        assert_eq!(reused(&server), 0);
    });
}

/// A hand-made client that authenticates a session and one pool connection with `key`.
async fn fake_pool(tunnel: SocketAddr, key: &str) -> (Async<TcpStream>, Async<TcpStream>, u32) {
    let (ctl, sid) = raw_session(tunnel, key).await;
    let (pool, reply) = raw_pool(tunnel, key, sid).await;
    let id = reply.unwrap_or_else(|code| panic!("pool connection refused: {code}"));
    (ctl, pool, id)
}

/// Read the `tcpr` line and the chunks that follow up to `want` payload bytes (header bytes
/// included in what is returned).
async fn read_opening(pool: &mut Async<TcpStream>, id: u32, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let line = format!("tcpr {id} ");
    let mut b = [0u8; 256];
    while got.len() < line.len() + 1 + want || !got.contains(&b'\n') {
        let n = within(WAIT, pool.read(&mut b))
            .await
            .expect("no opening line")
            .expect("read");
        assert!(n > 0, "pool connection closed");
        got.extend_from_slice(&b[..n]);
    }
    assert!(got.starts_with(line.as_bytes()), "{got:?}");
    got
}

/// Everything a user reads until the connection ends (EOF or reset), bounded by `WAIT`.
async fn read_all(s: &mut Async<TcpStream>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; 1024];
    loop {
        match within(WAIT, s.read(&mut b))
            .await
            .expect("user never closed")
        {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&b[..n]),
        }
    }
}

#[test]
fn a_client_breaking_the_chunks_loses_only_that_user() {
    smol::block_on(async {
        let env = &[("POOL_REUSE", "2"), ("POOL_GET_TIMEOUT", "300ms")];
        let server = start_env("server://k@127.0.0.1:0/127.0.0.1:0", env).await;
        let (tunnel, public) = (server.tunnel.unwrap(), server.public.unwrap());

        // A chunk cut short: the pool connection closes in the middle of a 100-byte chunk.
        let (_ctl, mut pool, id) = fake_pool(tunnel, "k").await;
        wait_until("the pool connection queued", || idle(&server.stats) == 1).await;
        let mut user = Async::<TcpStream>::connect(public).await.expect("connect");
        user.write_all(b"abc").await.expect("write");
        read_opening(&mut pool, id, 3).await;
        pool.write_all(b"\x00\x64only ten!").await.expect("write");
        drop(pool);
        assert_eq!(read_all(&mut user).await, b"only ten!");
        wait_until("user gone", || server.stats.active() == 0).await;
        assert_eq!(reused(&server), 0);

        // Bytes after the end chunk: the user gets what came before it, and the connection,
        // though both ends finished, is found unclean at the next take and never carries them
        // to another user.
        let (_ctl, mut pool, id) = fake_pool(tunnel, "k").await;
        wait_until("the new session's pool", || idle(&server.stats) == 1).await;
        let mut user = Async::<TcpStream>::connect(public).await.expect("connect");
        user.write_all(b"q").await.expect("write");
        read_opening(&mut pool, id, 1).await;
        pool.write_all(b"\x00\x02ok\x00\x00LEAK")
            .await
            .expect("write");
        user.get_ref()
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        assert_eq!(read_all(&mut user).await, b"ok");
        wait_until("back in the queue", || reused(&server) == 1).await;
        let mut next = Async::<TcpStream>::connect(public).await.expect("connect");
        next.write_all(b"hello?").await.expect("write");
        assert_eq!(read_all(&mut next).await, b"", "the next user got bytes");
        assert!(
            server.stats.refused.load(Relaxed) >= 1,
            "the next user was refused"
        );
        drop(pool);
    });
}
