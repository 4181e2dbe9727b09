//! Authentication on the tunnel port: wrong keys, garbage, silence and forged pool connections
//! are refused, and the running tunnel keeps carrying traffic through all of it. An
//! authenticated client parks at most `max` pool connections, in either flow.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use edgepass::auth::{self, Key, Secret};
use edgepass::handshake;
use edgepass::lines::{send, LineReader};
use edgepass::signal::{Kind, Signal, SID_LEN};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::Async;

/// How long a refused connection may take to be closed (the handshake timeout is 500 ms).
const CLOSE_BOUND: Duration = Duration::from_secs(3);

/// A server with a 500 ms handshake timeout and a client with the default 3 s reconnect delay:
/// if anything knocked the good session over, the next round trip would not find a pool.
async fn guarded_tunnel(key: &str) -> (Tunnel, smol::Task<()>) {
    let (target, echo) = echo_server();
    let server = start_env(&format!("server://{key}@127.0.0.1:0/127.0.0.1:0"), FAST).await;
    let tunnel = server.tunnel.expect("tunnel addr");
    let client = start(&format!("client://{key}@{tunnel}/{target}")).await;
    let stats = server.stats.clone();
    wait_until("a warm pool", || idle(&stats) > 0).await;
    let public = server.public.expect("public addr");
    let t = Tunnel {
        server,
        client,
        public,
    };
    (t, echo)
}

/// A round trip through the tunnel that must succeed within one second.
async fn assert_flows(t: &Tunnel, seed: u32) {
    let data = pattern(4096, seed);
    let back = within(Duration::from_secs(1), round_trip(t.public, &data))
        .await
        .expect("round trip took more than 1 s");
    assert!(back == data, "round trip {seed} came back wrong");
}

/// Read until the server closes the connection (EOF or reset), within [`CLOSE_BOUND`];
/// returns what it sent before closing.
async fn read_until_closed(s: &mut Async<TcpStream>) -> Vec<u8> {
    let mut got = Vec::new();
    let res = within(CLOSE_BOUND, s.read_to_end(&mut got)).await;
    assert!(res.is_some(), "server kept the connection open");
    got
}

/// Read the server's answer to our `auth` and the close after it; returns the `err` code.
/// The server proves the key (`proof`) only to a client whose own proof checked out: a refusal
/// for a later reason (a made-up session) may follow a `proof`, a wrong proof never does.
async fn refusal_code(s: &mut Async<TcpStream>, lines: &mut LineReader) -> u16 {
    let mut proved = false;
    let code = loop {
        match within(CLOSE_BOUND, lines.next(s))
            .await
            .expect("no answer to auth")
            .expect("bad answer to auth")
        {
            Signal::Proof { .. } if !proved => proved = true,
            Signal::Err { code, .. } => break code,
            other => panic!("forged connection was accepted: {other:?}"),
        }
    };
    assert!(
        !(proved && code == 202),
        "the server proved the key to a client with a wrong proof"
    );
    assert_eq!(read_until_closed(s).await, b"", "bytes after the err line");
    code
}

#[test]
fn wrong_key_client_is_refused_and_good_tunnel_keeps_working() {
    smol::block_on(async {
        let (t, _echo) = guarded_tunnel("s3cret").await;
        let tunnel = t.server.tunnel.expect("tunnel addr");
        assert_flows(&t, 1).await;
        let before = bad_peers(&t.server.stats);

        // Retries every 100, 200, 400 ms...: several refused attempts within a second.
        let wrong = start_env(&format!("client://s3creT@{tunnel}/127.0.0.1:9"), FAST).await;
        let deadline = Instant::now() + WAIT;
        let mut seed = 2;
        while bad_peers(&t.server.stats) < before + 3 {
            assert!(
                Instant::now() < deadline,
                "wrong client was not refused 3 times"
            );
            assert_flows(&t, seed).await;
            seed += 1;
        }
        // It never got a session: no pool was ever sized or dialed on its side.
        assert_eq!(
            wrong
                .stats
                .pool_size
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert_eq!(idle(&wrong.stats), 0);
        wrong.stop().await;

        for s in 100..110 {
            assert_flows(&t, s).await;
        }
        assert!(idle(&t.client.stats) > 0, "the good client lost its pool");
    });
}

#[test]
fn garbage_oversized_and_silent_connections_are_closed() {
    smol::block_on(async {
        let (t, _echo) = guarded_tunnel("s3cret").await;
        let tunnel = t.server.tunnel.expect("tunnel addr");
        let cnonce = "00112233445566778899aabbccddeeff";
        let long = vec![b'a'; 1000];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("oversized line", long),
            ("binary", vec![0, 0xff, 0x80, b'\n']),
            ("bad nonce", b"hello ctl zz\n".to_vec()),
            (
                "unknown kind",
                format!("hello bulk {cnonce}\n").into_bytes(),
            ),
            (
                "auth first",
                format!("auth {cnonce}{cnonce} -\n").into_bytes(),
            ),
        ];
        for (i, (what, bytes)) in cases.iter().enumerate() {
            let before = bad_peers(&t.server.stats);
            let mut s = Async::<TcpStream>::connect(tunnel).await.expect("connect");
            let sent = Instant::now();
            // The server may close before reading all of it: a failed write is fine.
            let _ = s.write_all(bytes).await;
            let got = read_until_closed(&mut s).await;
            // Closed on the bad bytes themselves, not later by the 500 ms handshake timeout.
            let took = sent.elapsed();
            assert!(
                took < Duration::from_millis(400),
                "{what}: closed after {took:?}"
            );
            assert!(
                !got.starts_with(b"session") && !got.starts_with(b"pooled"),
                "{what}: got {:?}",
                String::from_utf8_lossy(&got)
            );
            let stats = t.server.stats.clone();
            wait_until(what, || bad_peers(&stats) > before).await;
            assert_flows(&t, i as u32).await;
        }

        // Silence: dropped after HANDSHAKE_TIMEOUT (500 ms here), not before.
        let before = bad_peers(&t.server.stats);
        let opened = Instant::now();
        let mut s = Async::<TcpStream>::connect(tunnel).await.expect("connect");
        let got = read_until_closed(&mut s).await;
        let after = opened.elapsed();
        assert_eq!(got, b"", "the server spoke first");
        assert!(
            after >= Duration::from_millis(400),
            "closed too early: {after:?}"
        );
        let stats = t.server.stats.clone();
        wait_until("silent peer counted", || bad_peers(&stats) > before).await;
        assert_flows(&t, 50).await;
    });
}

/// A raw control connection whose proof is made with the wrong key gets `err 202`, and the
/// running session is not replaced.
#[test]
fn wrong_proof_on_control_connection_is_refused() {
    smol::block_on(async {
        let (t, _echo) = guarded_tunnel("s3cret").await;
        let tunnel = t.server.tunnel.expect("tunnel addr");
        let before = bad_peers(&t.server.stats);
        let (mut s, mut lines, tr) = raw_hello(tunnel, Kind::Ctl).await;
        let proof = tr.client_proof(&Key::derive(b"guess", tr.salt), None);
        send(&mut s, &Signal::Auth { proof, sid: None })
            .await
            .expect("send auth");
        assert_eq!(refusal_code(&mut s, &mut lines).await, 202);
        // Counted just after the connection is closed.
        let stats = t.server.stats.clone();
        wait_until("the refusal counted", || bad_peers(&stats) == before + 1).await;
        assert_flows(&t, 1).await;
    });
}

/// Pool connections cannot be added to a session without both the key and the live sid.
#[test]
fn forged_pool_connections_are_refused() {
    smol::block_on(async {
        let (t, _echo) = guarded_tunnel("s3cret").await;
        let tunnel = t.server.tunnel.expect("tunnel addr");
        let secret = Secret::new(b"s3cret");
        let made_up = auth::random::<SID_LEN>();

        // Right key, made-up session: a proper proof, but there is no such session.
        let (mut s, mut lines, tr) = raw_hello(tunnel, Kind::Pool).await;
        let proof = tr.client_proof(&secret.key(tr.salt), Some(made_up));
        send(
            &mut s,
            &Signal::Auth {
                proof,
                sid: Some(made_up),
            },
        )
        .await
        .expect("send auth");
        assert_eq!(refusal_code(&mut s, &mut lines).await, 204);
        assert_flows(&t, 1).await;

        // A proof over one sid presented with another: the proof does not verify.
        let before = bad_peers(&t.server.stats);
        let (mut s, mut lines, tr) = raw_hello(tunnel, Kind::Pool).await;
        let proof = tr.client_proof(&secret.key(tr.salt), Some([0; SID_LEN]));
        send(
            &mut s,
            &Signal::Auth {
                proof,
                sid: Some(made_up),
            },
        )
        .await
        .expect("send auth");
        assert_eq!(refusal_code(&mut s, &mut lines).await, 202);
        // Counted just after the connection is closed.
        let stats = t.server.stats.clone();
        wait_until("the refusal counted", || bad_peers(&stats) == before + 1).await;

        // Wrong key.
        let (mut s, mut lines, tr) = raw_hello(tunnel, Kind::Pool).await;
        let proof = tr.client_proof(&Key::derive(b"guess", tr.salt), Some(made_up));
        send(
            &mut s,
            &Signal::Auth {
                proof,
                sid: Some(made_up),
            },
        )
        .await
        .expect("send auth");
        assert_eq!(refusal_code(&mut s, &mut lines).await, 202);

        // A pool connection that names no session at all.
        let (mut s, mut lines, tr) = raw_hello(tunnel, Kind::Pool).await;
        let proof = tr.client_proof(&secret.key(tr.salt), None);
        send(&mut s, &Signal::Auth { proof, sid: None })
            .await
            .expect("send auth");
        assert_eq!(refusal_code(&mut s, &mut lines).await, 202);

        for seed in 2..6 {
            assert_flows(&t, seed).await;
        }
    });
}

/// A client proves the key only to a challenge that matches its transport, and takes nothing
/// from a server whose proof does not verify: an impostor on the server's address (here a
/// listener that speaks the handshake without the key) never gets a session going.
#[test]
fn client_refuses_an_impostor_server() {
    smol::block_on(async {
        let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
        let addr = l.get_ref().local_addr().expect("addr");
        let client = start_env(&format!("client://s3cret@{addr}/127.0.0.1:9"), FAST).await;
        let challenge = |tls, fp| Signal::Challenge {
            snonce: auth::random(),
            salt: auth::random(),
            tls,
            fp,
        };

        // A challenge claiming TLS on a plaintext connection: refused before any proof.
        let (mut s, _) = accept_hello(&l, Kind::Ctl).await;
        send(&mut s, &challenge(1, Some([7; 32])))
            .await
            .expect("send");
        assert_eq!(read_until_closed(&mut s).await, b"", "the client proved");

        // A matching challenge: the client proves, then refuses the impostor's proof and the
        // session offered after it.
        let (mut s, mut lines) = accept_hello(&l, Kind::Ctl).await;
        send(&mut s, &challenge(0, None)).await.expect("send");
        match within(CLOSE_BOUND, lines.next(&mut s)).await {
            Some(Ok(Signal::Auth { sid: None, .. })) => {}
            other => panic!("expected auth, got {other:?}"),
        }
        let session = Signal::Session {
            sid: auth::random(),
            forward: false,
            max: 8,
            tcp: true,
            udp: false,
        };
        send(&mut s, &Signal::Proof { proof: [9; 32] })
            .await
            .expect("send");
        send(&mut s, &session).await.expect("send");
        assert_eq!(read_until_closed(&mut s).await, b"", "the client went on");

        // It tries again later with a control connection, never with a pool one.
        accept_hello(&l, Kind::Ctl).await;
        assert_eq!(
            client
                .stats
                .pool_size
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        client.stop().await;
    });
}

/// Accept one connection on `l` and read its `hello`, which must be of `kind`.
async fn accept_hello(l: &Async<TcpListener>, kind: Kind) -> (Async<TcpStream>, LineReader) {
    let (mut s, _) = within(WAIT, l.accept())
        .await
        .expect("the client did not dial")
        .expect("accept");
    let mut lines = LineReader::new();
    match within(CLOSE_BOUND, lines.next(&mut s)).await {
        Some(Ok(Signal::Hello { kind: k, .. })) if k == kind => {}
        other => panic!("expected hello {kind:?}, got {other:?}"),
    }
    (s, lines)
}

/// Forward flow: the server waits on each pool connection for the client's opening line, and
/// an authenticated client may park at most `max` of them; one that closes frees its place.
#[test]
fn forward_flow_parks_at_most_max_pool_connections() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let url = format!("server://k@127.0.0.1:0/{target}?mode=2&max=4");
        let server = start(&url).await;
        let tunnel = server.tunnel.expect("tunnel addr");
        let (_ctl, sid) = raw_session(tunnel, "k").await;
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..10 {
            match raw_pool(tunnel, "k", sid).await {
                (conn, Ok(_)) => held.push(conn),
                (_, Err(code)) => refused.push(code),
            }
        }
        assert_eq!(held.len(), 4, "pool connections parked with max=4");
        assert_eq!(refused, [201; 6]);
        drop(held.pop());
        let deadline = Instant::now() + WAIT;
        loop {
            match raw_pool(tunnel, "k", sid).await {
                (conn, Ok(_)) => break held.push(conn),
                (_, Err(code)) => assert_eq!(code, 201),
            }
            assert!(
                Instant::now() < deadline,
                "the closed one's place never freed"
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        assert!(matches!(raw_pool(tunnel, "k", sid).await.1, Err(201)));
        server.stop().await;
    });
}

/// A server of the handshake's first version (its challenge had no salt and carried its proof)
/// or another program: the client says that it got no edgepass challenge, not which token
/// failed to parse.
#[test]
fn a_challenge_of_another_version_is_named_as_such() {
    smol::block_on(async {
        let l = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
        let addr = l.get_ref().local_addr().expect("addr");
        let old = format!("challenge {} 0 - {}\n", "ab".repeat(16), "cd".repeat(32));
        let server = smol::spawn(async move {
            for answer in [old.into_bytes(), b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()] {
                let (mut s, _) = l.accept().await.expect("accept");
                s.write_all(&answer).await.expect("answer");
                let _ = read_until_closed(&mut s).await;
            }
        });
        for _ in 0..2 {
            let mut s = Async::<TcpStream>::connect(addr).await.expect("connect");
            let mut lines = LineReader::new();
            let secret = Secret::new(b"s3cret");
            let shake = handshake::connect(&mut s, &mut lines, &secret, Kind::Ctl, None, 0, None);
            let e = within(CLOSE_BOUND, shake)
                .await
                .expect("no answer")
                .expect_err("an answer of another kind was taken");
            assert!(e.to_string().contains("not an edgepass challenge"), "{e}");
        }
        server.await;
    });
}

/// A key given in `EDGEPASS_KEY` (kept off the command line) is the same key as in a URL.
#[test]
fn a_key_from_the_environment_authenticates() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let env = [("EDGEPASS_KEY", "s3cret"), ("HANDSHAKE_TIMEOUT", "500ms")];
        let server = start_env("server://127.0.0.1:0/127.0.0.1:0", &env).await;
        let tunnel = server.tunnel.expect("tunnel addr");
        let client = start(&format!("client://s3cret@{tunnel}/{target}")).await;
        let stats = server.stats.clone();
        wait_until("a warm pool", || idle(&stats) > 0).await;
        let public = server.public.expect("public addr");
        assert_eq!(round_trip(public, b"env key").await, b"env key");
        client.stop().await;
        server.stop().await;
    });
}
