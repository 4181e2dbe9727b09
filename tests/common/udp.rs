//! UDP helpers shared by the UDP tests: an echo target, a user socket, bounded receives.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

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
