//! An idle tunnel's periodic work sleeps, and wakes at once for users: real roles on
//! 127.0.0.1:0. The release ticker sleeps after a few quiet seconds until a connection opens
//! or closes or bytes move, the client's pool ticks once the pool is full and unused until a
//! pool connection is taken; both sleep for up to 30 s unpoked, longer than any wait here.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;
use smol::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn idle_ticks_sleep_and_wake_for_a_burst() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel("k", target, "?min=2&max=16").await;
        let (s, c) = (t.server.stats.clone(), t.client.stats.clone());
        wait_until("the pool's ticks asleep", || c.pool_asleep.load(Relaxed)).await;
        wait_until("both release tickers asleep", || {
            s.ticker.is_armed() && c.ticker.is_armed()
        })
        .await;

        // More users at once than the pool holds: it runs dry and grows.
        let mut held = Vec::new();
        for i in 0..6 {
            held.push(echo_once(t.public, &pattern(100, i)).await);
        }
        // Both sides counted a user before its bytes came back: both tickers were poked.
        assert!(!s.ticker.is_armed() && !c.ticker.is_armed());
        wait_until("the pool's ticks awake", || !c.pool_asleep.load(Relaxed)).await;
        wait_until("the pool grown", || c.pool_size.load(Relaxed) > 2).await;

        drop(held);
        // Shrinking back takes ticks: they run again.
        wait_until("the pool back at its minimum", || {
            c.pool_size.load(Relaxed) == 2 && c.pool_idle.load(Relaxed) == 2
        })
        .await;
        wait_until("the pool's ticks asleep again", || {
            c.pool_asleep.load(Relaxed)
        })
        .await;
        wait_until("both release tickers asleep again", || {
            s.ticker.is_armed() && c.ticker.is_armed()
        })
        .await;
        let data = pattern(1000, 99);
        assert_eq!(
            round_trip(t.public, &data).await,
            data,
            "a user after it all"
        );
    });
}

/// A user held for long (an ssh session) keeps its reusable pool connection busy: the pool
/// still counts as full, so its ticks sleep rather than run every 100 ms while the user stays.
#[test]
fn a_long_held_user_lets_the_pool_ticks_sleep() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel("k", target, "?min=4&max=16").await;
        let c = t.client.stats.clone();
        let held = echo_once(t.public, &pattern(100, 1)).await;
        wait_until("the pool's ticks asleep with a user held", || {
            c.pool_asleep.load(Relaxed)
        })
        .await;
        assert_eq!(c.active(), 1, "the user is still held");
        drop(held);
        let data = pattern(1000, 2);
        assert_eq!(round_trip(t.public, &data).await, data, "a user after it");
    });
}

/// A user held open without moving bytes (an ssh session left alone) lets both release
/// tickers sleep; bytes moving again wake them, and so does the user leaving.
#[test]
fn a_held_quiet_user_lets_the_release_tickers_sleep() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel("k", target, "?min=2").await;
        let (s, c) = (t.server.stats.clone(), t.client.stats.clone());
        let mut held = echo_once(t.public, &pattern(100, 1)).await;
        wait_until("both release tickers asleep with a user held", || {
            s.ticker.is_armed() && c.ticker.is_armed()
        })
        .await;
        assert_eq!((s.active(), c.active()), (1, 1), "the user is still held");

        // The copy's buffers go back to the arenas after these bytes: that wakes the tickers.
        let data = pattern(20_000, 2);
        held.write_all(&data).await.expect("write");
        let mut back = vec![0u8; data.len()];
        held.read_exact(&mut back).await.expect("read");
        assert_eq!(back, data, "wrong echo");
        wait_until("both tickers woken by the bytes", || {
            !s.ticker.is_armed() && !c.ticker.is_armed()
        })
        .await;
        wait_until("both asleep again", || {
            s.ticker.is_armed() && c.ticker.is_armed()
        })
        .await;

        drop(held);
        wait_until("both woken by the user leaving", || {
            s.active() == 0 && c.active() == 0 && !s.ticker.is_armed() && !c.ticker.is_armed()
        })
        .await;
    });
}
