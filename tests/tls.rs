//! TLS modes 1 and 2 through a real server and client on 127.0.0.1:0: echo, a private CA, a
//! wrong name, a man in the middle, hot reload, TLS 1.3 only, and every bad file at start.
#![cfg(feature = "tls")]

mod common;
mod tls_support;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::bin::run;
use common::*;
use edgepass::config::{self, Config};
use edgepass::tls::suites;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Timer};
use tls_support::*;

/// A URL parsed with a short reconnect delay, so refusal-and-retry tests take milliseconds.
fn fast(url: &str) -> Config {
    let env = |k: &str| (k == "SERVICE_COOLDOWN").then(|| "100ms".to_string());
    config::parse(url, &env).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Server with `server_q`, client with `client_q`, pool warm.
async fn tls_tunnel(target: SocketAddr, server_q: &str, client_q: &str) -> Tunnel {
    let server = start_cfg(fast(&format!(
        "server://k3y@127.0.0.1:0/127.0.0.1:0{server_q}"
    )))
    .await;
    let tunnel = server.tunnel.unwrap();
    let client = start_cfg(fast(&format!("client://k3y@{tunnel}/{target}{client_q}"))).await;
    let stats = client.stats.clone();
    wait_until("a warm TLS pool", || stats.pool_idle.load(Relaxed) > 0).await;
    let public = server.public.unwrap();
    Tunnel {
        server,
        client,
        public,
    }
}

/// A `tls=2` tunnel: the server serves `crt` and `key`, the client verifies it against `ca`
/// for the name `tunnel.test`.
async fn tls2_tunnel(target: SocketAddr, ca: &str, crt: &str, key: &str) -> Tunnel {
    let server_q = format!("?tls=2&crt={crt}&key={key}");
    tls_tunnel(target, &server_q, &format!("?ca={ca}&sni=tunnel.test")).await
}

/// Private CA files in `dir`: returns (ca, crt, key) paths and the leaf's DER.
fn ca_files(dir: &Dir, name: &str) -> (String, String, String, Vec<u8>, Ca) {
    let ca = Ca::new("edgepass test CA");
    let (crt, key, der) = ca.server(name);
    let ca_path = dir.write("ca.pem", &ca.pem(), 0);
    let crt = dir.write("server.crt", &crt, 0);
    let key = dir.write("server.key", &key, 0);
    (ca_path, crt, key, der, ca)
}

#[test]
fn tls1_echo_1mib_client_learns_the_mode() {
    capture_logs();
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tls_tunnel(target, "?tls=1", "").await;
        let data = pattern(1 << 20, 7);
        assert!(round_trip(t.public, &data).await == data, "1 MiB echo");
        let addr = t.server.tunnel.unwrap().to_string();
        assert!(logged(&["uses tls=1", &addr]), "client learned the mode");
        // The suite the client lists first for this CPU (tls::suites) is the one in use.
        let first = suites::order(suites::aes_hardware())[0];
        let want = format!("tls=1, {})", suites::name(first));
        assert!(logged(&["session up with", &addr, &want]), "{want}");
        // The tunnel port speaks TLS 1.3 from the first byte.
        let (v, _) = probe(t.server.tunnel.unwrap()).await;
        assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
    });
}

#[test]
fn the_server_takes_the_cipher_suite_the_client_lists_first() {
    capture_logs();
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let t = tls_tunnel(target, "?tls=1", "").await;
        // A router without AES instructions asks for ChaCha20-Poly1305 first; a server whose
        // own CPU prefers AES-GCM must still give it ChaCha20, and the other way round.
        for aes in [false, true] {
            let order = suites::order(aes);
            let got = suite_for(t.server.tunnel.unwrap(), order.clone()).await;
            assert_eq!(got, order[0].suite(), "aes={aes}");
        }
    });
}

#[test]
fn tls2_echo_1mib_private_ca() {
    capture_logs();
    smol::block_on(async {
        let dir = Dir::new("tls2-echo");
        let (ca, crt, key, der, _ca) = ca_files(&dir, "tunnel.test");
        let (target, _echo) = echo_server();
        let t = tls2_tunnel(target, &ca, &crt, &key).await;
        let data = pattern(1 << 20, 9);
        assert!(round_trip(t.public, &data).await == data, "1 MiB echo");
        let addr = t.server.tunnel.unwrap();
        assert!(logged(&["session up with", &addr.to_string(), "tls=2"]));
        assert_eq!(probe(addr).await.1, sha256(&der), "the files' certificate");
    });
}

/// A certificate larger than one TLS record (here many names; a long chain does the same)
/// still brings the pool up and carries users: the pool connections' TLS stream must hold a
/// handshake message larger than its record buffer.
#[test]
fn tls2_a_certificate_larger_than_a_record_carries_users() {
    capture_logs();
    smol::block_on(async {
        let dir = Dir::new("tls2-large");
        let ca = Ca::new("edgepass test CA");
        let names = std::iter::once("tunnel.test".to_string())
            .chain((0..1200).map(|i| format!("host-{i:04}.tunnel.test")))
            .collect();
        let (crt, key, der) = ca.server_for(names);
        // One record carries at most 16 KiB of handshake.
        assert!(der.len() > 24 * 1024, "certificate of {} B", der.len());
        let ca = dir.write("ca.pem", &ca.pem(), 0);
        let crt = dir.write("server.crt", &crt, 0);
        let key = dir.write("server.key", &key, 0);
        let (target, _echo) = echo_server();
        let t = tls2_tunnel(target, &ca, &crt, &key).await;
        let data = pattern(256 * 1024, 11);
        assert!(round_trip(t.public, &data).await == data, "256 KiB echo");
        assert_eq!(probe(t.server.tunnel.unwrap()).await.1, sha256(&der));
    });
}

#[test]
fn tls2_wrong_name_and_unknown_issuer_are_refused() {
    capture_logs();
    smol::block_on(async {
        let dir = Dir::new("tls2-name");
        let (ca, crt, key, _, _ca) = ca_files(&dir, "tunnel.test");
        let other_ca = dir.write("other-ca.pem", &Ca::new("another CA").pem(), 0);
        // Same name as the real CA, another key.
        let twin_ca = dir.write("twin-ca.pem", &Ca::new("edgepass test CA").pem(), 0);
        let server = start_cfg(fast(&format!(
            "server://k3y@127.0.0.1:0/127.0.0.1:0?tls=2&crt={crt}&key={key}"
        )))
        .await;
        let tunnel = server.tunnel.unwrap();
        let cases = [
            (format!("?ca={ca}&sni=wrong.test"), "name mismatch"),
            // Without sni the name is the tunnel's IP, which the certificate does not carry.
            (format!("?ca={ca}"), "name mismatch"),
            (format!("?ca={other_ca}&sni=tunnel.test"), "unknown issuer"),
            (format!("?ca={twin_ca}&sni=tunnel.test"), "bad signature"),
        ];
        for (q, why) in cases {
            let ours = format!("cannot open a session with {tunnel}");
            let count = || lines_with(why).iter().filter(|l| l.contains(&ours)).count();
            let before = count();
            let client = start_cfg(fast(&format!("client://k3y@{tunnel}/127.0.0.1:9{q}"))).await;
            // Refused, then tried again after the backoff: the reason is logged each time.
            let deadline = Instant::now() + WAIT;
            while count() < before + 2 {
                assert!(
                    Instant::now() < deadline,
                    "{q}: no '{why}' twice in the log: {:?}",
                    lines_with(&ours)
                );
                Timer::after(Duration::from_millis(20)).await;
            }
            assert_eq!(client.stats.pool_idle.load(Relaxed), 0, "{q}: no pool");
            client.stop.trigger();
            client.task.await.unwrap();
        }
        assert!(
            server.stats.bad_peers.load(Relaxed) >= 6,
            "the server saw the aborts"
        );
    });
}

#[test]
fn man_in_the_middle_is_refused_and_the_direct_path_works() {
    capture_logs();
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let server = start_cfg(fast("server://k3y@127.0.0.1:0/127.0.0.1:0?tls=1")).await;
        let tunnel = server.tunnel.unwrap();
        let m = mitm(tunnel);
        let victim = start_cfg(fast(&format!("client://k3y@{}/{target}", m.addr))).await;
        let ours = format!("cannot open a session with {}", m.addr);
        let done = m.tls_done.clone();
        wait_until("two refused TLS sessions through the proxy", || {
            done.load(Relaxed) >= 2 && logged(&[&ours, "fingerprint mismatch"])
        })
        .await;
        // The client saw the proxy's certificate, the server's proof named another: it stopped
        // before sending anything that depends on the key.
        for sent in m.from_client.lock().unwrap().iter() {
            let text = String::from_utf8_lossy(sent);
            assert!(
                text.starts_with("hello ctl "),
                "client spoke first: {text:?}"
            );
            assert!(
                !text.contains("auth "),
                "client authenticated through the proxy"
            );
        }
        assert_eq!(victim.stats.pool_idle.load(Relaxed), 0);
        assert_eq!(
            server.stats.pool_idle.load(Relaxed),
            0,
            "no session via the proxy"
        );

        // The same key, straight to the server: works.
        let direct = start_cfg(fast(&format!("client://k3y@{tunnel}/{target}"))).await;
        let stats = direct.stats.clone();
        wait_until("the direct pool", || stats.pool_idle.load(Relaxed) > 0).await;
        let public = server.public.unwrap();
        assert_eq!(round_trip(public, b"direct").await, b"direct");
    });
}

#[test]
fn hot_reload_serves_the_new_certificate_and_keeps_open_connections() {
    capture_logs();
    smol::block_on(async {
        let dir = Dir::new("tls2-reload");
        let (ca_path, crt, key, der1, ca) = ca_files(&dir, "tunnel.test");
        let (target, _echo) = echo_server();
        let t = tls2_tunnel(target, &ca_path, &crt, &key).await;
        let tunnel = t.server.tunnel.unwrap();
        assert_eq!(probe(tunnel).await.1, sha256(&der1));

        // A user connection open across the renewal.
        let mut user = Async::<TcpStream>::connect(t.public).await.unwrap();
        let mut buf = [0u8; 6];
        user.write_all(b"before").await.unwrap();
        user.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"before");

        // Renewed: new key and certificate, renamed into place.
        let (crt2, key2, der2) = ca.server("tunnel.test");
        dir.write("server.key", &key2, 5);
        dir.write("server.crt", &crt2, 5);
        let deadline = Instant::now() + WAIT;
        while probe(tunnel).await.1 != sha256(&der2) {
            assert!(
                Instant::now() < deadline,
                "the new certificate was never served"
            );
            Timer::after(Duration::from_millis(200)).await;
        }
        assert!(logged(&["reloaded the certificate from", &crt]));

        user.write_all(b"after!").await.unwrap();
        user.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after!", "the open connection survived");

        // New pool connections verify the new certificate: more users than the pool held.
        for i in 0..4u32 {
            let data = pattern(1000, i);
            assert_eq!(round_trip(t.public, &data).await, data);
        }
    });
}

#[test]
fn plain_server_refuses_a_tls_client() {
    capture_logs();
    smol::block_on(async {
        let server = start_cfg(fast("server://k3y@127.0.0.1:0/127.0.0.1:0")).await;
        let tunnel = server.tunnel.unwrap();
        let client = start_cfg(fast(&format!("client://k3y@{tunnel}/127.0.0.1:9?tls=1"))).await;
        let s = server.stats.clone();
        let ours = format!("cannot open a session with {tunnel}");
        wait_until(
            "the plain server refusing TLS, the client saying why",
            || s.bad_peers.load(Relaxed) >= 2 && logged(&[&ours, "(is it tls=0?)"]),
        )
        .await;
        assert_eq!(client.stats.pool_idle.load(Relaxed), 0);
    });
}

/// `openssl s_client` against a tls=1 tunnel port: TLS 1.3 completes, TLS 1.2 does not.
#[test]
fn openssl_s_client_sees_tls13_only() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed: skipping the s_client check");
        return;
    }
    smol::block_on(async {
        let server = start_cfg(fast("server://k3y@127.0.0.1:0/127.0.0.1:0?tls=1")).await;
        let addr = server.tunnel.unwrap().to_string();
        let run = |version: &'static str| {
            let addr = addr.clone();
            smol::unblock(move || {
                Command::new("openssl")
                    .args(["s_client", "-connect", &addr, version])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap()
            })
        };
        let ok = run("-tls1_3").await;
        let out = String::from_utf8_lossy(&ok.stdout);
        assert!(out.contains("TLSv1.3"), "s_client -tls1_3: {out}");
        let old = run("-tls1_2").await;
        let out = String::from_utf8_lossy(&old.stdout);
        assert!(!old.status.success(), "TLS 1.2 must fail: {out}");
        assert!(!out.contains("TLSv1.2, Cipher is"), "{out}");
    });
}

/// Run the binary with `url`, and with `--check url`; each must exit 2 at once with one
/// line naming `file`.
fn exits_2_naming(url: &str, file: &str, words: &[&str]) {
    exits_2_naming_with(&[], url, file, words);
    exits_2_naming_with(&["--check"], url, file, words);
}

fn exits_2_naming_with(flags: &[&str], url: &str, file: &str, words: &[&str]) {
    let args: Vec<&str> = flags.iter().copied().chain([url]).collect();
    let (code, _, err) = run(&args, &[]);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(file), "{err} should name {file}");
    for w in words {
        assert!(err.contains(w), "{err} should say {w}");
    }
}

#[test]
fn bad_files_exit_2_naming_the_file() {
    let dir = Dir::new("tls-bad");
    let (crt, key, _) = self_signed(2020, 2090);
    let crt = dir.write("good.crt", &crt, 0);
    let key = dir.write("good.key", &key, 0);
    let (_, other_key, _) = self_signed(2020, 2090);
    let other_key = dir.write("other.key", &other_key, 0);
    let (expired, _, _) = self_signed(2001, 2011);
    let expired = dir.write("expired.crt", &expired, 0);
    let (future, future_key, _) = self_signed(2090, 2099);
    let future = dir.write("future.crt", &future, 0);
    let future_key = dir.write("future.key", &future_key, 0);
    let garbage = dir.write(
        "garbage.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        0,
    );
    let missing = dir.path("missing.crt");
    let a_dir = dir.path(""); // a directory: exists, cannot be read as a file
    let s = |q: String| format!("server://k@127.0.0.1:0/127.0.0.1:0?tls=2{q}");
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        (s(format!("&key={key}")), "crt", vec!["certificate"]),
        (s(format!("&crt={crt}")), "key", vec!["key"]),
        (
            s(format!("&crt={missing}&key={key}")),
            &missing,
            vec!["cannot read"],
        ),
        (
            s(format!("&crt={a_dir}&key={key}")),
            &a_dir,
            vec!["cannot read"],
        ),
        (
            s(format!("&crt={crt}&key={missing}")),
            &missing,
            vec!["cannot read"],
        ),
        (
            s(format!("&crt={garbage}&key={key}")),
            &garbage,
            vec!["PEM"],
        ),
        (
            s(format!("&crt={crt}&key={crt}")),
            &crt,
            vec!["PRIVATE KEY"],
        ),
        (
            s(format!("&crt={crt}&key={other_key}")),
            &other_key,
            vec!["does not match"],
        ),
        (
            s(format!("&crt={expired}&key={key}")),
            &expired,
            vec![
                "expired",
                "2001-01-01 00:00:00 UTC",
                "2011-01-01 00:00:00 UTC",
            ],
        ),
        (
            s(format!("&crt={future}&key={future_key}")),
            &future,
            vec!["not valid yet", "2090-01-01 00:00:00 UTC"],
        ),
        (
            format!("client://k@127.0.0.1:1/127.0.0.1:2?ca={missing}"),
            &missing,
            vec!["CA file"],
        ),
        (
            format!("client://k@127.0.0.1:1/127.0.0.1:2?ca={key}"),
            &key,
            vec!["no usable CERTIFICATE"],
        ),
    ];
    assert!(!cases.is_empty());
    for (url, file, words) in &cases {
        exits_2_naming(url, file, words);
    }
    // The good pair passes the check, which exits at once without starting the server.
    let (code, out, err) = run(&["--check", &s(format!("&crt={crt}&key={key}"))], &[]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out.trim_end(),
        "edgepass: the server configuration is valid"
    );
}

/// A client that insists on TLS (`tls=1`) at a server without it: each side says what is
/// wrong, rather than "unknown signal" on the server.
#[test]
fn a_tls_client_at_a_plain_server_is_named_on_both_sides() {
    use common::bin::{server_addrs, spawn, wait_line};
    let (_server, server_log) = spawn("server://k@127.0.0.1:0/127.0.0.1:0", &[]);
    let (tunnel, _) = server_addrs(&wait_line(&server_log, "tunnel on"));
    let (_client, client_log) = spawn(&format!("client://k@{tunnel}/127.0.0.1:22?tls=1"), &[]);
    let line = wait_line(&server_log, "refused");
    assert!(
        line.contains("a TLS ClientHello, but this port runs tls=0"),
        "{line}"
    );
    let line = wait_line(&client_log, "cannot open a session");
    assert!(line.contains("(is it tls=0?)"), "{line}");
}
