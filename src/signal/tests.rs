//! Tests of the signal codec: round trips, byte-at-a-time feeding, malformed lines.

use super::*;

/// One of every variant, with the edge values of each field.
fn samples() -> Vec<Signal<'static>> {
    let n16 = [0xabu8; 16];
    let m32: [u8; 32] = core::array::from_fn(|i| i as u8 * 8);
    vec![
        Signal::Hello {
            kind: Kind::Ctl,
            cnonce: n16,
        },
        Signal::Hello {
            kind: Kind::Pool,
            cnonce: [0; 16],
        },
        Signal::Challenge {
            snonce: n16,
            salt: [0; 16],
            tls: 0,
            fp: None,
        },
        Signal::Challenge {
            snonce: [0xff; 16],
            salt: n16,
            tls: 2,
            fp: Some([0xff; 32]),
        },
        Signal::UseTls { mode: 1 },
        Signal::UseTls { mode: 2 },
        Signal::Auth {
            proof: m32,
            sid: None,
        },
        Signal::Auth {
            proof: m32,
            sid: Some(n16),
        },
        Signal::Proof { proof: m32 },
        Signal::Proof { proof: [0; 32] },
        Signal::Session {
            sid: n16,
            forward: false,
            max: 0,
            tcp: true,
            udp: true,
        },
        Signal::Session {
            sid: n16,
            forward: true,
            max: u32::MAX,
            tcp: true,
            udp: false,
        },
        Signal::Session {
            sid: n16,
            forward: true,
            max: 64,
            tcp: false,
            udp: true,
        },
        Signal::Pooled { id: 0 },
        Signal::Pooled { id: u32::MAX },
        Signal::Err {
            code: 202,
            text: "permission denied",
        },
        Signal::Err {
            code: 100,
            text: " a  b ~",
        },
        Signal::Err {
            code: 599,
            text: "x",
        },
        Signal::Tcp {
            id: 1,
            peer: "1.2.3.4:5".parse().unwrap(),
            reuse: false,
        },
        Signal::Tcp {
            id: u32::MAX,
            peer: "[::1]:65535".parse().unwrap(),
            reuse: true,
        },
        Signal::Udp {
            id: 7,
            peer: "[2001:db8::ff00:42:8329]:53".parse().unwrap(),
        },
        Signal::Udp {
            id: 0,
            peer: "[fe80::1%3]:0".parse().unwrap(),
        },
        Signal::Udp {
            id: 9,
            peer: "[::ffff:10.0.0.1]:9".parse().unwrap(),
        },
        Signal::Ping(0),
        Signal::Ping(u32::MAX),
        Signal::Pong(12345),
        Signal::Flush,
        Signal::Trim(3),
        Signal::Hello {
            kind: Kind::Reserve,
            cnonce: n16,
        },
        Signal::Hello {
            kind: Kind::Connect,
            cnonce: n16,
        },
        Signal::Reserve {
            name: "cam-7",
            device: n16,
        },
        Signal::Reserve {
            name: "A.b_c-012345678901234567890123456789012345678901234567890123456",
            device: [0; 16],
        },
        Signal::Reserved {
            sid: n16,
            ttl: 3600,
            max: 16,
        },
        Signal::Reserved {
            sid: [0; 16],
            ttl: 0,
            max: u32::MAX,
        },
        Signal::Refresh,
        Signal::Connect {
            name: "cam-7",
            udp: false,
        },
        Signal::Connect {
            name: "x",
            udp: true,
        },
        Signal::Circuit { secs: 0, bytes: 0 },
        Signal::Circuit {
            secs: u32::MAX,
            bytes: u64::MAX,
        },
    ]
}

#[test]
fn round_trip_every_variant() {
    let samples = samples();
    assert!(!samples.is_empty());
    for s in samples {
        let line = s.encode();
        assert_eq!(line.last(), Some(&b'\n'), "{s:?}");
        assert_eq!(Signal::parse(&line), Ok((s, line.len())), "{s:?}");
    }
}

#[test]
fn encodes_exact_lines() {
    let cases: &[(Signal<'_>, &str)] = &[
        (Signal::Ping(42), "ping 42\n"),
        (Signal::Flush, "flush\n"),
        (Signal::UseTls { mode: 2 }, "tls 2\n"),
        (
            Signal::Hello {
                kind: Kind::Pool,
                cnonce: [0x0f; 16],
            },
            "hello pool 0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f\n",
        ),
        (
            Signal::Tcp {
                id: 3,
                peer: "[::1]:80".parse().unwrap(),
                reuse: false,
            },
            "tcp 3 [::1]:80\n",
        ),
        (
            Signal::Tcp {
                id: 4,
                peer: "10.0.0.1:8".parse().unwrap(),
                reuse: true,
            },
            "tcpr 4 10.0.0.1:8\n",
        ),
        (
            Signal::Hello {
                kind: Kind::Reserve,
                cnonce: [0x0f; 16],
            },
            "hello reserve 0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f\n",
        ),
        (
            Signal::Reserve {
                name: "cam-7",
                device: [0xa0; 16],
            },
            "reserve cam-7 a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0\n",
        ),
        (
            Signal::Reserved {
                sid: [1; 16],
                ttl: 3600,
                max: 16,
            },
            "reserved 01010101010101010101010101010101 3600 16\n",
        ),
        (Signal::Refresh, "refresh\n"),
        (
            Signal::Connect {
                name: "cam-7",
                udp: false,
            },
            "connect cam-7 tcp\n",
        ),
        (
            Signal::Connect {
                name: "cam-7",
                udp: true,
            },
            "connect cam-7 udp\n",
        ),
        (
            Signal::Circuit {
                secs: 120,
                bytes: 131072,
            },
            "circuit 120 131072\n",
        ),
    ];
    assert!(!cases.is_empty());
    for (s, want) in cases {
        assert_eq!(core::str::from_utf8(&s.encode()), Ok(*want));
    }
}

#[test]
fn byte_at_a_time() {
    let samples = samples();
    assert!(!samples.is_empty());
    for s in samples {
        let mut stream = Vec::new();
        stream.extend_from_slice(&s.encode());
        let end = stream.len();
        stream.extend_from_slice(b"user data\n");
        for cut in 0..end {
            assert_eq!(
                Signal::parse(&stream[..cut]),
                Err(SignalError::Incomplete),
                "{s:?} cut at {cut}"
            );
        }
        for cut in end..=stream.len() {
            let (got, used) = Signal::parse(&stream[..cut]).unwrap();
            assert_eq!((got, used), (s, end));
            assert_eq!(&stream[used..], b"user data\n");
        }
    }
}

#[test]
fn malformed_lines() {
    let h32 = "0123456789abcdef0123456789abcdef";
    let h64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let long = format!("err 400 {}", "x".repeat(201));
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty line"),
        ("ping 1\r".into(), "carriage return"),
        ("flush\r".into(), "carriage return"),
        ("bogus 1".into(), "unknown signal"),
        ("PING 1".into(), "unknown signal"),
        (" ping 1".into(), "extra space"),
        ("ping  1".into(), "extra space"),
        ("ping 1 ".into(), "trailing space"),
        ("flush ".into(), "trailing space"),
        ("ping ".into(), "trailing space"),
        ("ping".into(), "missing token"),
        ("ping 1 2".into(), "extra token"),
        ("flush now".into(), "extra token"),
        ("ping 01".into(), "leading zero"),
        ("ping 00".into(), "leading zero"),
        ("ping -1".into(), "bad number"),
        ("ping +1".into(), "bad number"),
        ("ping 1a".into(), "bad number"),
        ("ping 4294967296".into(), "number overflow"),
        ("trim 99999999999999999999".into(), "number overflow"),
        (format!("hello ctl {}", h32.to_uppercase()), "bad hex"),
        (format!("hello ctl {}", &h32[1..]), "bad hex"),
        (format!("hello ctl {h32}0"), "bad hex"),
        (format!("hello ctl {}g", &h32[1..]), "bad hex"),
        (format!("hello admin {h32}"), "bad kind"),
        (format!("hello ctl {h32} x"), "extra token"),
        (format!("challenge {h32} {h32} 3 -"), "bad tls mode"),
        (format!("challenge {h32} {h32} 0 - "), "trailing space"),
        (format!("challenge {h32} {h32} 0 --"), "bad hex"),
        (format!("challenge {h32} {h32} 0"), "missing token"),
        (format!("challenge {h32} {h64} 0 -"), "bad hex"),
        // The handshake's first version had no salt, and the server's proof last.
        (format!("challenge {h32} 0 - {h64}"), "bad hex"),
        (format!("challenge {h32} {h32} 0 - {h64}"), "extra token"),
        (format!("proof {h32}"), "bad hex"),
        ("proof".into(), "missing token"),
        (format!("proof {h64} -"), "extra token"),
        ("tls 0".into(), "bad tls mode"),
        (format!("auth {h64} {h64}"), "bad hex"),
        (format!("session {h32} x 1 tu"), "bad flow"),
        (format!("session {h32} r 1 ut"), "bad proto"),
        (format!("session {h32} r 01 tu"), "leading zero"),
        ("err 99 x".into(), "bad code"),
        ("err 600 x".into(), "bad code"),
        ("err 0400 x".into(), "bad code"),
        ("err 4x0 x".into(), "bad code"),
        ("err 400".into(), "missing token"),
        ("err 400 ".into(), "missing token"),
        ("err 400 caf\u{e9}".into(), "non-ASCII text"),
        ("err 400 tab\there".into(), "control byte in text"),
        ("err 400 del\x7f".into(), "control byte in text"),
        (long, "text too long"),
        ("tcp 1 1.2.3.4".into(), "bad address"),
        ("tcp 1 host:80".into(), "bad address"),
        ("tcp 1 ::1:80".into(), "bad address"),
        ("tcp 1 1.2.3.4:65536".into(), "bad address"),
        ("tcp 1 [0::1]:80".into(), "non-canonical address"),
        ("tcp 1 [::1]:080".into(), "non-canonical address"),
        ("udp 1 [::FFFF:1.2.3.4]:80".into(), "non-canonical address"),
        ("udp 1 1.2.3.4:5 x".into(), "extra token"),
        (format!("reserve cam/7 {h32}"), "bad name"),
        (format!("reserve {} {h32}", "a".repeat(64)), "name too long"),
        ("reserve cam-7".into(), "missing token"),
        ("reserve cam-7 xyz".into(), "bad hex"),
        (format!("reserve cam-7 {h32} x"), "extra token"),
        (format!("reserved {h32} 1"), "missing token"),
        (format!("reserved {h32} 01 1"), "leading zero"),
        ("refresh now".into(), "extra token"),
        ("connect".into(), "missing token"),
        ("connect cam-7".into(), "missing token"),
        ("connect cam-7 ".into(), "trailing space"),
        ("connect cam-7  tcp".into(), "extra space"),
        ("connect cam-7 TCP".into(), "bad proto"),
        ("connect cam-7 tu".into(), "bad proto"),
        ("connect cam 7 tcp".into(), "bad proto"),
        ("connect cam-7 udp x".into(), "extra token"),
        ("connect caf\u{e9} tcp".into(), "bad name"),
        ("circuit 1".into(), "missing token"),
        ("circuit 1 18446744073709551616".into(), "number overflow"),
        ("circuit 4294967296 1".into(), "number overflow"),
        ("circuit 1 01".into(), "leading zero"),
        ("circuit 1 -1".into(), "bad number"),
    ];
    assert!(!cases.is_empty());
    for (text, why) in &cases {
        let mut buf = text.clone().into_bytes();
        buf.push(b'\n');
        assert_eq!(
            Signal::parse(&buf),
            Err(SignalError::Malformed(why)),
            "{text:?}"
        );
    }
}

#[test]
fn non_utf8_text_is_refused() {
    assert_eq!(
        Signal::parse(b"err 400 \xff\xfe\n"),
        Err(SignalError::Malformed("non-ASCII text"))
    );
    assert_eq!(
        Signal::parse(b"err 400 a\0b\n"),
        Err(SignalError::Malformed("control byte in text"))
    );
    assert_eq!(
        Signal::parse(b"tcp 1 \xff\n"),
        Err(SignalError::Malformed("bad address"))
    );
}

#[test]
fn line_length_limit() {
    assert_eq!(Signal::parse(&[b'a'; 255]), Err(SignalError::Incomplete));
    assert_eq!(Signal::parse(&[b'a'; 256]), Err(SignalError::TooLong));
    assert_eq!(Signal::parse(&[b'a'; 300]), Err(SignalError::TooLong));
    // A `\n` at index 255 ends a 256-byte line: judged on its content.
    let mut buf = [b'a'; 300];
    buf[255] = b'\n';
    assert_eq!(
        Signal::parse(&buf),
        Err(SignalError::Malformed("unknown signal"))
    );
    // One byte further is past the limit.
    let mut buf = [b'a'; 300];
    buf[256] = b'\n';
    assert_eq!(Signal::parse(&buf), Err(SignalError::TooLong));
}

#[test]
fn err_text_is_sanitized() {
    let long = "y".repeat(500);
    let cases: &[(&str, &str)] = &[
        ("", "?"),
        ("a\nb\r\tc", "a?b??c"),
        ("caf\u{e9}", "caf??"),
        (&long, &long[..MAX_ERR_TEXT]),
    ];
    assert!(!cases.is_empty());
    for &(text, want) in cases {
        let line = Signal::Err { code: 400, text }.encode();
        assert!(line.len() <= MAX_LINE);
        let (got, used) = Signal::parse(&line).unwrap();
        assert_eq!(
            got,
            Signal::Err {
                code: 400,
                text: want
            }
        );
        assert_eq!(used, line.len());
    }
}

#[test]
fn out_of_range_fields_still_parse() {
    let cases = [
        (
            Signal::Err { code: 7, text: "x" },
            Signal::Err {
                code: 100,
                text: "x",
            },
        ),
        (
            Signal::Err {
                code: 9999,
                text: "x",
            },
            Signal::Err {
                code: 599,
                text: "x",
            },
        ),
        (Signal::UseTls { mode: 0 }, Signal::UseTls { mode: 1 }),
        (Signal::UseTls { mode: 9 }, Signal::UseTls { mode: 2 }),
        (
            Signal::Challenge {
                snonce: [1; 16],
                salt: [3; 16],
                tls: 7,
                fp: None,
            },
            Signal::Challenge {
                snonce: [1; 16],
                salt: [3; 16],
                tls: 2,
                fp: None,
            },
        ),
        (
            Signal::Connect {
                name: "",
                udp: true,
            },
            Signal::Connect {
                name: "_",
                udp: true,
            },
        ),
        (
            Signal::Connect {
                name: "cam 7/é",
                udp: false,
            },
            Signal::Connect {
                name: "cam_7___",
                udp: false,
            },
        ),
        (
            Signal::Reserve {
                name: &"n".repeat(100),
                device: [1; 16],
            },
            Signal::Reserve {
                name: &"n".repeat(63),
                device: [1; 16],
            },
        ),
        (
            Signal::Session {
                sid: [1; 16],
                forward: false,
                max: 1,
                tcp: false,
                udp: false,
            },
            Signal::Session {
                sid: [1; 16],
                forward: false,
                max: 1,
                tcp: true,
                udp: true,
            },
        ),
    ];
    for (given, want) in cases {
        let line = given.encode();
        assert_eq!(Signal::parse(&line), Ok((want, line.len())), "{given:?}");
    }
}

#[test]
fn hex_helpers() {
    assert_eq!(hex_decode::<2>(b"00ff"), Some([0, 0xff]));
    assert_eq!(hex_decode::<2>(b"00fF"), None);
    assert_eq!(hex_decode::<2>(b"00f"), None);
    assert_eq!(hex_decode::<0>(b""), Some([]));
    let mut line = Line::new();
    push_hex(&mut line, &[0x01, 0xab, 0xff]);
    assert_eq!(&line[..], b"01abff");
}
