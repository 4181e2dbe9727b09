//! Fuzzes the chunk decoder: no panic; a stream fed in arbitrary pieces decodes the same
//! payload as reads bounded by `want()` (the copy's way), and those never read past the end.
#![no_main]

use edgepass::chunk::{Dechunk, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, the rest is the stream.
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);

    // Arbitrary pieces, every step.
    let mut d = Dechunk::new();
    let mut by_steps = Vec::new();
    let mut end = None;
    'outer: for (i, part) in stream.chunks(piece).enumerate() {
        let mut at = 0;
        while at < part.len() {
            match d.step(&part[at..]) {
                Ok(Step::Payload(n)) => {
                    assert!(n > 0 && at + n <= part.len());
                    by_steps.extend_from_slice(&part[at..at + n]);
                    at += n;
                }
                Ok(Step::Header(n)) => {
                    assert!(n > 0);
                    at += n;
                }
                Ok(Step::End(n)) => {
                    at += n;
                    end = Some(i * piece + at);
                    break 'outer;
                }
                Err(_) => unreachable!("no error before the end"),
            }
        }
    }

    // Reads bounded by want(), as the copy does.
    let mut d = Dechunk::new();
    let mut by_reads = Vec::new();
    let mut at = 0;
    while !d.ended() && at < stream.len() {
        let n = d.want().min(piece).min(stream.len() - at);
        let read = &stream[at..at + n];
        let p = d.split(read).expect("a bounded read never fails");
        by_reads.extend_from_slice(&read[..p]);
        at += n;
    }
    assert_eq!(by_steps, by_reads);
    assert_eq!(end, d.ended().then_some(at));
    if d.ended() {
        assert!(d.step(b"x").is_err());
    }
});
