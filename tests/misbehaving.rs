//! The client against a hand-made server that misbehaves on pool connections: every wait is
//! bounded, and a pool connection lost without a user is not redialed in a tight loop.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::fake_server::*;
use common::*;

/// The session stays up for the whole test: the fake never answers the heartbeats.
const QUIET: &[(&str, &str)] = &[("HANDSHAKE_TIMEOUT", "500ms"), ("REPORT_INTERVAL", "60s")];

#[test]
fn a_pool_connection_never_told_pooled_is_closed_after_the_handshake_timeout() {
    smol::block_on(async {
        let fake = fake_server("k", PoolReply::Silent);
        let url = format!("client://k@{}/127.0.0.1:9?min=1", fake.addr);
        let client = start_env(&url, QUIET).await;
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
