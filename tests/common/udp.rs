//! UDP helpers shared by the UDP tests: an echo target, a user socket, bounded receives.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smol::future::FutureExt;
use smol::{Async, Task, Timer};

/// How long a test waits for one reply before calling the datagram lost.
pub const REPLY_WAIT: Duration = Duration::from_secs(5);

/// A UDP echo target on 127.0.0.1:0.
pub fn udp_echo() -> (SocketAddr, Task<()>) {
    udp_echo_at(([127, 0, 0, 1], 0).into())
}

/// A UDP echo target on `addr`.
pub fn udp_echo_at(addr: SocketAddr) -> (SocketAddr, Task<()>) {
    let s = Async::<UdpSocket>::bind(addr).expect("bind udp echo");
    let addr = s.get_ref().local_addr().expect("addr");
    let task = smol::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        }
    });
    (addr, task)
}

/// A user socket on 127.0.0.1, connected to `to`.
pub fn user(to: SocketAddr) -> Async<UdpSocket> {
    let s = Async::<UdpSocket>::bind(([127, 0, 0, 1], 0)).expect("bind user");
    s.get_ref().connect(to).expect("connect user");
    s
}

/// The next datagram on `s`, or `None` after `wait` (or if an ICMP error says the port is
/// closed).
pub async fn recv(s: &Async<UdpSocket>, buf: &mut [u8], wait: Duration) -> Option<usize> {
    async {
        match s.recv(buf).await {
            Ok(n) => Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => None,
            Err(e) => panic!("recv: {e}"),
        }
    }
    .or(async {
        Timer::after(wait).await;
        None
    })
    .await
}

/// Send `d` and expect exactly `d` back within [`REPLY_WAIT`].
pub async fn echo(s: &Async<UdpSocket>, d: &[u8], what: &str) {
    s.send(d).await.expect("send");
    let mut buf = vec![0u8; 65536];
    let Some(n) = recv(s, &mut buf, REPLY_WAIT).await else {
        panic!(
            "{what}: no reply in {REPLY_WAIT:?} (datagram of {} B lost)",
            d.len()
        );
    };
    assert_eq!(n, d.len(), "{what}: reply length (boundary not kept)");
    assert!(buf[..n] == *d, "{what}: reply contents differ");
}

/// A TCP echo target and, on the same address, a UDP socket that never reads: its receive
/// buffer fills and the kernel drops the rest, so sending to it never waits. `None` when that
/// UDP port is taken.
pub fn echo_and_udp_sink() -> Option<(SocketAddr, Task<()>, UdpSocket)> {
    let (addr, task) = super::echo_server();
    let sink = UdpSocket::bind(addr).ok()?;
    Some((addr, task, sink))
}

/// Two threads sending 32-byte datagrams from one source to `to` as fast as they can, until
/// [`UdpFlood::stop`] (or [`super::WAIT`]): a receive loop finds one waiting nearly every time.
pub struct UdpFlood {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpFlood {
    /// Start flooding `to`.
    pub fn start(to: SocketAddr) -> UdpFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let source = UdpSocket::bind("127.0.0.1:0").expect("bind flood source");
        let threads = (0..2)
            .map(|_| {
                let (stop, u) = (stop.clone(), source.try_clone().expect("clone"));
                std::thread::spawn(move || {
                    let deadline = Instant::now() + super::WAIT;
                    while !stop.load(Relaxed) && Instant::now() < deadline {
                        let _ = u.send_to(&[0u8; 32], to);
                    }
                })
            })
            .collect();
        UdpFlood { stop, threads }
    }

    /// Stop and wait for the senders.
    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        for t in self.threads {
            t.join().expect("flood thread");
        }
    }
}

/// Flood `to` (UDP) until the role's `stats` count 100,000 bytes of it, then make one TCP round
/// trip to `to` while the flood goes on: it must finish within 5 s with the bytes intact.
pub async fn tcp_is_served_during_a_flood(to: SocketAddr, stats: &edgepass::stats::Stats) {
    let flood = UdpFlood::start(to);
    super::wait_until("the flood goes through", || stats.udp_rx.get() > 100_000).await;
    let data = super::pattern(4096, 3);
    let echoed = super::within(Duration::from_secs(5), super::round_trip(to, &data)).await;
    flood.stop();
    assert_eq!(
        echoed.as_deref(),
        Some(&data[..]),
        "a TCP round trip during the flood"
    );
}
