//! An idle tunnel's periodic work sleeps, and wakes at once for users: real roles on
//! 127.0.0.1:0. The release ticker sleeps after a few quiet seconds until a connection opens,
//! the client's pool ticks once the pool is full and unused until a pool connection is taken;
//! both sleep for up to 30 s unpoked, longer than any wait here.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::*;

#[test]
fn idle_ticks_sleep_and_wake_for_a_burst() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel("k", target, "?min=2&max=16").await;
        let (s, c) = (t.server.stats.clone(), t.client.stats.clone());
        wait_until("the pool's ticks asleep", || c.pool_asleep.load(Relaxed)).await;
        wait_until("both release tickers asleep", || {
            s.opened.is_armed() && c.opened.is_armed()
        })
        .await;

        // More users at once than the pool holds: it runs dry and grows.
        let mut held = Vec::new();
        for i in 0..6 {
            held.push(echo_once(t.public, &pattern(100, i)).await);
        }
        // Both sides counted a user before its bytes came back: both tickers were poked.
        assert!(!s.opened.is_armed() && !c.opened.is_armed());
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
            s.opened.is_armed() && c.opened.is_armed()
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
