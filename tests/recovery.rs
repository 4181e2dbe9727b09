//! Recovery: a restarted server gets its client back by itself; a server whose client goes
//! away keeps running and takes the next client; a new client replaces a silent session.

mod common;

use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use edgepass::signal::{Kind, Signal};
use smol::io::AsyncReadExt;
use smol::Async;

/// A round trip through `public` that must come back intact.
async fn assert_flows(public: std::net::SocketAddr, seed: u32) {
    let data = pattern(64 * 1024, seed);
    let back = within(WAIT, round_trip(public, &data))
        .await
        .expect("round trip timed out");
    assert!(back == data, "round trip {seed} came back wrong");
}

#[test]
fn server_restart_client_reconnects_by_itself() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel_env("s3cret", target, "", FAST).await;
        assert_flows(t.public, 1).await;
        let port = t.server.tunnel.expect("tunnel addr").port();
        let Tunnel { server, client, .. } = t;

        server.stop().await;
        // The client notices: its session ends and its pool is gone.
        let cs = client.stats.clone();
        wait_until("the client to drop its pool", || idle(&cs) == 0).await;
        // Nothing listens on the tunnel port now.
        assert!(Async::<TcpStream>::connect(([127, 0, 0, 1], port))
            .await
            .is_err());

        // A new server on the same tunnel port (a new public port).
        let back = Instant::now();
        let server = start_env(
            &format!("server://s3cret@127.0.0.1:{port}/127.0.0.1:0"),
            FAST,
        )
        .await;
        let ss = server.stats.clone();
        wait_until("the client to come back", || idle(&ss) > 0).await;
        let took = back.elapsed();
        assert_flows(server.public.expect("public"), 2).await;
        assert_flows(server.public.expect("public"), 3).await;
        eprintln!("client back {took:?} after the server restarted");
        assert!(took < Duration::from_secs(5), "reconnect took {took:?}");
        client.stop().await;
        server.stop().await;
    });
}

#[test]
fn client_gone_server_keeps_running_and_takes_a_new_client() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let env = &[("SERVICE_COOLDOWN", "100ms"), ("POOL_GET_TIMEOUT", "300ms")];
        let t = tunnel_env("s3cret", target, "", env).await;
        assert_flows(t.public, 1).await;
        let tunnel = t.server.tunnel.expect("tunnel addr");
        let Tunnel {
            server,
            client,
            public,
        } = t;

        client.stop().await;
        let ss = server.stats.clone();
        wait_until("the server to drop the pool", || idle(&ss) == 0).await;
        // A user now is refused after POOL_GET_TIMEOUT, and the server stays up.
        let refused = server.stats.refused.load(Relaxed);
        let mut s = Async::<TcpStream>::connect(public).await.expect("connect");
        let mut got = Vec::new();
        let _ = within(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("user without a client was not closed");
        assert!(got.is_empty());
        assert_eq!(server.stats.refused.load(Relaxed), refused + 1);
        assert!(
            !server.task.is_finished(),
            "the server stopped with its client"
        );

        let client = start_env(&format!("client://s3cret@{tunnel}/{target}"), env).await;
        wait_until("the new client's pool", || idle(&ss) > 0).await;
        assert_flows(public, 2).await;
        client.stop().await;
        server.stop().await;
    });
}

/// A client that hangs without closing its control connection (a frozen process, a dead NAT
/// entry) holds the session; a freshly authenticated client takes over at once instead of
/// waiting for the heartbeat timeout, and the old control connection is closed.
#[test]
fn new_client_replaces_a_silent_session() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let server = start_env("server://s3cret@127.0.0.1:0/127.0.0.1:0", FAST).await;
        let tunnel = server.tunnel.expect("tunnel addr");

        // The silent one: authenticates a control connection by hand, then never speaks.
        let (mut old, mut lines, tr) = raw_hello(tunnel, Kind::Ctl).await;
        authenticate(&mut old, &mut lines, &tr, "s3cret", None).await;
        match within(WAIT, lines.next(&mut old)).await.expect("no reply") {
            Ok(Signal::Session { .. }) => {}
            other => panic!("expected a session, got {other:?}"),
        }

        let client = start_env(&format!("client://s3cret@{tunnel}/{target}"), FAST).await;
        let ss = server.stats.clone();
        wait_until("the new client's pool", || idle(&ss) > 0).await;
        assert_flows(server.public.expect("public"), 1).await;

        // The old control connection was closed by the server (well before 3 heartbeats).
        let mut rest = Vec::new();
        let closed = within(Duration::from_secs(2), old.read_to_end(&mut rest)).await;
        assert!(
            closed.is_some(),
            "the replaced control connection is still open"
        );
        client.stop().await;
        server.stop().await;
    });
}

/// A stop does not wait `SHUTDOWN_TIMEOUT` for a user that is still waiting for a pool
/// connection (no client here): none can arrive after the stop, so it is closed at once.
#[test]
fn stop_does_not_wait_for_users_without_a_pool() {
    smol::block_on(async {
        let server = start("server://s3cret@127.0.0.1:0/127.0.0.1:0").await;
        let mut s = Async::<TcpStream>::connect(server.public.expect("public"))
            .await
            .expect("connect");
        let ss = server.stats.clone();
        wait_until("the user to be accepted", || {
            ss.tcp_active.load(Relaxed) == 1
        })
        .await;
        let stopped = Instant::now();
        server.stop().await;
        let took = stopped.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "stop took {took:?} (drain is 5 s)"
        );
        let mut rest = Vec::new();
        let _ = within(WAIT, s.read_to_end(&mut rest))
            .await
            .expect("user not closed");
        assert!(rest.is_empty());
    });
}
