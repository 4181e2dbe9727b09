//! IPv6: a tunnel over [::1], and dual-stack `[::]` listeners that IPv4 users reach.

mod common;
mod targets;

use std::net::TcpListener;

use common::*;
use targets::*;

fn have_ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

#[test]
fn tunnel_over_ipv6_loopback_with_proxy_header() {
    if !have_ipv6_loopback() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    smol::block_on(async {
        let (target, rx, _t) = recording_target("::1");
        let server = start("server://k@[::1]:0/[::1]:0?proxy=1").await;
        let tun = server.tunnel.unwrap();
        assert!(tun.is_ipv6());
        let client = start(&format!("client://k@{tun}/{target}?proxy=1")).await;
        let st = client.stats.clone();
        wait_until("a warm pool", || {
            st.pool_idle.load(std::sync::atomic::Ordering::Relaxed) > 0
        })
        .await;
        let me = user_says_hi(server.public.unwrap()).await;
        let (peer, got) = recv(&rx).await;
        assert!(peer.is_ipv6(), "the client dialed the target over IPv6");
        let want = format!("PROXY TCP6 ::1 ::1 {} {}\r\nhi", me.port(), target.port());
        assert_eq!(String::from_utf8_lossy(&got), want);
    });
}

#[test]
fn dual_stack_listener_takes_ipv4_users() {
    let v6only = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").unwrap_or_default();
    if !have_ipv6_loopback() || v6only.trim() == "1" {
        eprintln!("skipped: no IPv6, or [::] listeners are IPv6-only here");
        return;
    }
    smol::block_on(async {
        let (target, rx, _t) = recording_target("127.0.0.1");
        // Tunnel and public ports on [::]; users and the client come in over IPv4.
        let server = start("server://k@[::]:0/[::]:0?proxy=2").await;
        let tun = server.tunnel.unwrap().port();
        let client = start(&format!("client://k@127.0.0.1:{tun}/{target}?proxy=2")).await;
        let st = client.stats.clone();
        wait_until("a warm pool", || {
            st.pool_idle.load(std::sync::atomic::Ordering::Relaxed) > 0
        })
        .await;
        let public = server.public.unwrap().port();
        let me = user_says_hi(([127, 0, 0, 1], public).into()).await;
        let (_, got) = recv(&rx).await;
        // The server saw ::ffff:127.0.0.1; the header carries it as plain IPv4.
        assert_eq!(&got[12..16], &[0x21, 0x11, 0, 12], "{got:?}");
        assert_eq!(&got[16..24], &[127, 0, 0, 1, 127, 0, 0, 1]);
        assert_eq!(&got[24..26], &me.port().to_be_bytes());
        assert_eq!(&got[28..], b"hi");
    });
}
