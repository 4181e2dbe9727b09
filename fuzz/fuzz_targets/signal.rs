//! Fuzzes `Signal::parse`: no panic, and whatever parses re-encodes to the same bytes.
#![no_main]

use edgepass::signal::{Signal, MAX_LINE};
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

fuzz_target!(|data: &[u8]| {
    // Round trip: one canonical form, so encode(parse(x)) is x byte for byte.
    if let Ok((signal, used)) = Signal::parse(data) {
        assert!(used <= MAX_LINE && Some(&b'\n') == data.get(used - 1));
        let line = signal.encode();
        assert_eq!(Some(&line[..]), data.get(..used));
        assert_eq!(Signal::parse(&line), Ok((signal, used)));
    }
    // Encode never makes an unparsable line, whatever the err text.
    if let Ok(text) = std::str::from_utf8(data) {
        let line = Signal::Err { code: 400, text }.encode();
        assert!(
            matches!(Signal::parse(&line), Ok((Signal::Err { code: 400, .. }, n)) if n == line.len())
        );
    }
    // Nor whatever the address (flowinfo is not sent).
    if let Some((ip, rest)) = data.split_first_chunk::<18>() {
        let (ip, port) = ip.split_at(16);
        let ip = Ipv6Addr::from(<[u8; 16]>::try_from(ip).unwrap());
        let port = u16::from_be_bytes([port[0], port[1]]);
        let scope = rest
            .first_chunk::<4>()
            .map_or(0, |s| u32::from_be_bytes(*s));
        for peer in [
            SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)),
            SocketAddr::new(ip.to_canonical(), port),
        ] {
            let signal = Signal::Udp { id: scope, peer };
            let line = signal.encode();
            assert_eq!(Signal::parse(&line), Ok((signal, line.len())));
        }
    }
});
