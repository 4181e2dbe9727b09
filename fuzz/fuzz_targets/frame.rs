//! Fuzzes `parse_frame`: no panic, and a stream of frames splits exactly as it was written.
#![no_main]

use edgepass::frame::{frame_header, parse_frame, FrameError, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the size limit, the rest is the stream.
    let Some((max, mut stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes(*max));
    loop {
        match parse_frame(stream, max) {
            Ok((payload, used)) => {
                assert!(payload.len() <= max && used == HEADER_LEN + payload.len());
                let header = frame_header(payload.len()).unwrap();
                assert_eq!(stream.get(..HEADER_LEN), Some(&header[..]));
                assert_eq!(stream.get(HEADER_LEN..used), Some(payload));
                stream = &stream[used..];
            }
            Err(FrameError::Incomplete) => {
                let len = stream.first_chunk::<2>().map(|h| u16::from_be_bytes(*h));
                assert!(len.is_none_or(|len| stream.len() < HEADER_LEN + usize::from(len)));
                break;
            }
            Err(FrameError::TooLarge) => {
                let len = u16::from_be_bytes(*stream.first_chunk::<2>().unwrap());
                assert!(usize::from(len) > max);
                break;
            }
        }
    }
});
