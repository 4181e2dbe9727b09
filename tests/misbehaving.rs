//! The client against a hand-made server that misbehaves on pool connections: every wait is
//! bounded, and a pool connection lost without a user is not redialed in a tight loop.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::fake_server::*;
use common::*;

/// The session stays up for the whole test: the fake never answers the heartbeats.
const QUIET: &[(&str, &str)] = &[("HANDSHAKE_TIMEOUT", "500ms"), ("REPORT_INTERVAL", "60s")];

/// A client with a pool of one, against a fake server that answers its pool connections
/// with `reply`.
async fn client_against(reply: PoolReply) -> (FakeServer, Running) {
    let fake = fake_server("k", reply);
    let url = format!("client://k@{}/127.0.0.1:9?min=1", fake.addr);
    let client = start_env(&url, QUIET).await;
    (fake, client)
}

#[test]
fn a_pool_connection_never_told_pooled_is_closed_after_the_handshake_timeout() {
    smol::block_on(async {
        let (fake, client) = client_against(PoolReply::Silent).await;
        let st = fake.stats.clone();
        wait_until("a pool connection", || st.pools() >= 1).await;
        let start = Instant::now();
        wait_until("the client to close it", || {
            st.closed_by_client.load(Relaxed) >= 1
        })
        .await;
        let took = start.elapsed();
        assert!(took < Duration::from_secs(3), "closed after {took:?}");
        client.stop().await;
    });
}

#[test]
fn pool_connections_closed_while_idle_are_redialed_by_the_ticks_not_at_once() {
    smol::block_on(async {
        let (fake, client) = client_against(PoolReply::PooledThenClose).await;
        let st = fake.stats.clone();
        wait_until("11 pool connections", || st.pools() >= 11).await;
        let span = {
            let t = st.pools.lock().unwrap_or_else(|e| e.into_inner());
            t[10] - t[0]
        };
        // The ticks come every MIN_POOL_INTERVAL (100 ms) at the fastest: about 1 s for ten
        // redials. Redialing at once took a few milliseconds.
        assert!(span >= Duration::from_millis(500), "10 redials in {span:?}");
        client.stop().await;
    });
}
