//! PROXY protocol headers (HAProxy's spec, v1 text and v2 binary) sent to a target first.
//!
//! With `proxy=1` or `proxy=2` the side that dials the target writes one header before any
//! user byte, so nginx or HAProxy behind the tunnel sees the real user's address. Pure
//! functions over fixed buffers: no sockets, no allocation.
//!
//! # Addresses
//! IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack `[::]` listener reports for
//! an IPv4 user) are written as IPv4. When the two addresses still differ in family, the IPv4
//! one is written as IPv4-mapped IPv6, so the header always carries both real addresses
//! (the spec allows `UNKNOWN` there; mapping loses nothing).
//!
//! # Examples
//! ```
//! let mut buf = [0u8; edgepass::proxy::V1_MAX];
//! let n = edgepass::proxy::v1(
//!     "192.168.0.1:56324".parse().unwrap(),
//!     "192.168.0.11:443".parse().unwrap(),
//!     &mut buf,
//! );
//! assert_eq!(&buf[..n], b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
//! ```

use std::io::Write;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Longest v1 header: the spec's bound (`PROXY TCP6` with two full IPv6 addresses).
pub const V1_MAX: usize = 108;
/// Longest v2 header this module writes: 16-byte prefix + two IPv6 addresses and ports.
pub const V2_MAX: usize = 52;
/// The v2 signature, the first 12 bytes of every v2 header.
pub const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Both addresses in one family: IPv4 when both are (or map to) IPv4, else both IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    };
    let (s, d) = (canon(src), canon(dst));
    if s.is_ipv4() == d.is_ipv4() {
        return (s, d);
    }
    let v6 = |a: SocketAddr| -> SocketAddr {
        match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        }
    };
    (v6(s), v6(d))
}

/// Write the v1 (text) header for a TCP connection from `src` to `dst` into `out`; returns
/// its length. `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (or `TCP6`).
pub fn v1(src: SocketAddr, dst: SocketAddr, out: &mut [u8; V1_MAX]) -> usize {
    let (s, d) = same_family(src, dst);
    let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    let mut w = &mut out[..];
    // The longest header fits in V1_MAX by the spec's arithmetic, so this write cannot fail.
    let _ = write!(
        w,
        "PROXY {fam} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    );
    V1_MAX - w.len()
}

/// Write the v2 (binary) header for a TCP connection from `src` to `dst` into `out`; returns
/// its length (28 for IPv4, 52 for IPv6). Version 2, command PROXY (`0x21`), family
/// `0x11` (TCP over IPv4) or `0x21` (TCP over IPv6), then the addresses and ports.
pub fn v2(src: SocketAddr, dst: SocketAddr, out: &mut [u8; V2_MAX]) -> usize {
    let (s, d) = same_family(src, dst);
    out[..12].copy_from_slice(&V2_SIG);
    out[12] = 0x21;
    let at = 16;
    let n = match (s.ip(), d.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            out[13] = 0x11;
            out[at..at + 4].copy_from_slice(&a.octets());
            out[at + 4..at + 8].copy_from_slice(&b.octets());
            8
        }
        (a, b) => {
            out[13] = 0x21;
            out[at..at + 16].copy_from_slice(&as_v6(a).octets());
            out[at + 16..at + 32].copy_from_slice(&as_v6(b).octets());
            32
        }
    };
    out[at + n..at + n + 2].copy_from_slice(&s.port().to_be_bytes());
    out[at + n + 2..at + n + 4].copy_from_slice(&d.port().to_be_bytes());
    let len = (n + 4) as u16;
    out[14..16].copy_from_slice(&len.to_be_bytes());
    at + n + 4
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A header of either version, owning its bytes.
pub struct Header {
    buf: [u8; V1_MAX],
    len: usize,
}

impl Header {
    /// The header for `proxy=mode` (1 or 2), or `None` for 0 (off) and unknown modes.
    pub fn new(mode: u8, src: SocketAddr, dst: SocketAddr) -> Option<Header> {
        let mut buf = [0u8; V1_MAX];
        let len = match mode {
            1 => v1(src, dst, &mut buf),
            2 => {
                let mut b2 = [0u8; V2_MAX];
                let n = v2(src, dst, &mut b2);
                buf[..n].copy_from_slice(&b2[..n]);
                n
            }
            _ => return None,
        };
        Some(Header { buf, len })
    }

    /// The bytes to send.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn text(src: &str, dst: &str) -> String {
        let mut buf = [0u8; V1_MAX];
        let n = v1(a(src), a(dst), &mut buf);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn bin(src: &str, dst: &str) -> Vec<u8> {
        let mut buf = [0u8; V2_MAX];
        let n = v2(a(src), a(dst), &mut buf);
        buf[..n].to_vec()
    }

    #[test]
    fn v1_examples_from_the_spec() {
        // proxy-protocol.txt section 2.1 examples.
        assert_eq!(
            text("255.255.255.255:65535", "255.255.255.255:65535"),
            "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        assert_eq!(
            text("192.168.0.1:56324", "192.168.0.11:443"),
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            text("[2001:db8::1]:56324", "[2001:db8::2]:443"),
            "PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"
        );
    }

    #[test]
    fn v1_longest_fits() {
        let s = text(
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        );
        assert_eq!(s.len(), 104, "{s}");
        assert!(s.len() <= V1_MAX);
        assert!(s.ends_with(" 65535 65535\r\n"));
    }

    #[test]
    fn v1_mixed_families() {
        // A dual-stack listener reports IPv4 users as mapped addresses: written as IPv4.
        assert_eq!(
            text("[::ffff:10.0.0.1]:1000", "127.0.0.1:80"),
            "PROXY TCP4 10.0.0.1 127.0.0.1 1000 80\r\n"
        );
        // A real IPv6 user and an IPv4 target: the IPv4 side becomes IPv4-mapped.
        assert_eq!(
            text("[2001:db8::1]:1000", "127.0.0.1:80"),
            "PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 1000 80\r\n"
        );
    }

    #[test]
    fn v2_ipv4_bytes() {
        let got = bin("192.168.0.1:56324", "192.168.0.11:443");
        let mut want = V2_SIG.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11]);
        want.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]); // 56324, 443
        assert_eq!(got, want);
        assert_eq!(got.len(), 28);
        assert_eq!(
            &got[..12],
            b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
        );
    }

    #[test]
    fn v2_ipv6_bytes() {
        let got = bin("[2001:db8::1]:1", "[::1]:65535");
        let mut want = V2_SIG.to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        s[15] = 1;
        want.extend_from_slice(&s);
        let mut d = [0u8; 16];
        d[15] = 1;
        want.extend_from_slice(&d);
        want.extend_from_slice(&[0, 1, 0xff, 0xff]);
        assert_eq!(got, want);
        assert_eq!(got.len(), V2_MAX);
    }

    #[test]
    fn v2_mixed_families() {
        let got = bin("[2001:db8::1]:1", "10.1.2.3:2");
        assert_eq!(got[13], 0x21);
        assert_eq!(
            &got[32..48],
            &"::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap().octets()
        );
        let got = bin("[::ffff:10.1.2.3]:1", "10.1.2.4:2");
        assert_eq!(got[13], 0x11);
        assert_eq!(&got[16..24], &[10, 1, 2, 3, 10, 1, 2, 4]);
    }

    #[test]
    fn header_modes() {
        let (s, d) = (a("1.2.3.4:5"), a("6.7.8.9:10"));
        assert!(Header::new(0, s, d).is_none());
        assert!(Header::new(3, s, d).is_none());
        assert_eq!(
            Header::new(1, s, d).unwrap().bytes(),
            b"PROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n"
        );
        assert_eq!(
            Header::new(2, s, d).unwrap().bytes(),
            &bin("1.2.3.4:5", "6.7.8.9:10")[..]
        );
    }
}
