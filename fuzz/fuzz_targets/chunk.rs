//! Fuzzes the chunk decoder: no panic; a stream fed in arbitrary pieces decodes the same
//! payload as reads bounded by `want()` (the copy's way), and those never read past the end.
#![no_main]

use edgepass::chunk::Dechunk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, the rest is the stream.
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);

    // Arbitrary pieces, fed whole.
    let mut d = Dechunk::new();
    let mut by_steps = Vec::new();
    let mut end = None;
    for (i, part) in stream.chunks(piece).enumerate() {
        let fed = d.feed(part, |p| {
            assert!(!p.is_empty());
            by_steps.extend_from_slice(p);
        });
        let fed = fed.expect("no error before the end");
        assert!(fed <= part.len());
        if d.ended() {
            end = Some(i * piece + fed);
            break;
        }
        assert_eq!(fed, part.len());
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
