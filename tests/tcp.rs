//! TCP through a real server and client on 127.0.0.1:0.

mod common;

use common::*;

#[test]
fn echo_small() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tunnel("s3cret", target, "").await;
        assert_eq!(round_trip(t.public, b"hello tunnel").await, b"hello tunnel");
    });
}
