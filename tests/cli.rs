//! The real binary: bad command lines exit 2 with one line naming the bad part, `--help` and
//! `--version`, and SIGTERM stops accepting, lets open connections finish, and exits 0 (a
//! second one exits at once with 1).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::bin::*;
use common::*;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::Async;

/// The binary's default `SHUTDOWN_TIMEOUT`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Connect attempts to `addr` until one is refused (a closed listener), within 5 s.
async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Async::<TcpStream>::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts after SIGTERM"
        );
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

#[test]
fn bad_command_lines_exit_2_with_one_line_naming_the_bad_part() {
    let ok = "server://k@127.0.0.1:0/127.0.0.1:0";
    // (arguments, environment, text the message must contain)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let table: &[Case] = &[
        (&["ftp://k@127.0.0.1:1/127.0.0.1:2"], &[], "`ftp`"),
        (&["server://k@127.0.0.1:99999/127.0.0.1:0"], &[], "99999"),
        (&["server://k@127.0.0.1:0/127.0.0.1:70000"], &[], "70000"),
        (
            &["server://k@127.0.0.1:0/127.0.0.1:0?colour=red"],
            &[],
            "colour",
        ),
        (
            &["client://k@127.0.0.1:1/127.0.0.1:2?read=5parsecs"],
            &[],
            "5parsecs",
        ),
        (&["server://k@127.0.0.1:0/127.0.0.1:0?tls=3"], &[], "tls=3"),
        (
            &["server://k@127.0.0.1:0/127.0.0.1:0?min=abc"],
            &[],
            "min=abc",
        ),
        (
            &["server://k@127.0.0.1:0/127.0.0.1:0?log=loud"],
            &[],
            "log=loud",
        ),
        (&["client://k@127.0.0.1:1"], &[], "missing target"),
        (
            &["client://k@127.0.0.1:0/127.0.0.1:22"],
            &[],
            "`127.0.0.1:0`",
        ),
        (&["client://k@h:5/127.0.0.1:0"], &[], "`127.0.0.1:0`"),
        (
            &["visit://k@127.0.0.1:0/127.0.0.1:0?name=cam"],
            &[],
            "`127.0.0.1:0`",
        ),
        (&["server://k@[::1/127.0.0.1:0"], &[], "[::1"),
        (&["127.0.0.1:8080"], &[], "127.0.0.1:8080"),
        (&[], &[], "missing URL"),
        (&["--frobnicate"], &[], "--frobnicate"),
        (&[ok, "extra"], &[], "extra"),
        (
            &[ok],
            &[("HANDSHAKE_TIMEOUT", "soon")],
            "HANDSHAKE_TIMEOUT=soon",
        ),
        (
            &[ok],
            &[("NP_TCP_DATA_BUF_SIZE", "1x")],
            "NP_TCP_DATA_BUF_SIZE=1x",
        ),
    ];
    assert!(!table.is_empty());
    // Each as it is, and with --check: the check refuses what a start refuses, the same way.
    let checked: Vec<Vec<&str>> = table
        .iter()
        .map(|(args, ..)| [&["--check"][..], args].concat())
        .collect();
    let with_check = table
        .iter()
        .zip(&checked)
        .map(|(&(_, env, bad), args)| (&args[..], env, bad));
    for (args, env, bad) in table.iter().copied().chain(with_check) {
        let (code, stdout, stderr) = run(args, env);
        assert_eq!(code, 2, "{args:?} {env:?}: exit code; stderr {stderr:?}");
        assert_eq!(stdout, "", "{args:?}: nothing on stdout");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one stderr line, got {stderr:?}");
        let line = lines[0];
        assert!(
            line.contains(bad),
            "{args:?}: {line:?} does not name {bad:?}"
        );
        assert!(line.starts_with("edgepass: "), "{line:?}");
        assert_eq!(line.matches("--help").count(), 1, "{line:?}");
    }
}

#[test]
fn check_passes_a_good_configuration_and_starts_nothing() {
    let tunnel = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tunnel.local_addr().unwrap().port();
    // The port is taken: a start would fail there (exit 1), the check binds nothing.
    let url = format!("server://k@127.0.0.1:{port}/127.0.0.1:0");
    for (args, role) in [
        (vec!["--check", &url], "server"),
        (
            vec!["-check", "relay", "-port", "4001", "-max-conns", "5"],
            "relay",
        ),
        (
            vec!["client://k@127.0.0.1:1/127.0.0.1:2", "--check"],
            "client",
        ),
    ] {
        let (code, stdout, stderr) = run(&args, &[]);
        assert_eq!((code, stderr.as_str()), (0, ""), "{args:?}");
        assert_eq!(
            stdout.trim_end(),
            format!("edgepass: the {role} configuration is valid")
        );
    }
    let (code, _, stderr) = run(&[&url], &[]);
    assert_eq!(
        code, 1,
        "a start on the taken port fails at run time: {stderr}"
    );
    let taken = format!("cannot listen on 127.0.0.1:{port} (TCP): ");
    assert!(
        stderr.contains(&taken),
        "the line names the address: {stderr}"
    );
}

#[test]
fn help_names_every_role_and_version_prints_the_version() {
    for flag in ["--help", "-h", "help"] {
        let (code, out, err) = run(&[flag], &[]);
        assert_eq!((code, err.as_str()), (0, ""), "{flag}");
        for role in ["server://", "client://", "relay://", "visit://"] {
            assert!(out.contains(role), "{flag}: help does not show {role}");
        }
        assert!(out.contains("EXIT CODES"), "{flag}");
    }
    for flag in ["--version", "-V"] {
        let (code, out, err) = run(&[flag], &[]);
        assert_eq!((code, err.as_str()), (0, ""), "{flag}");
        assert_eq!(out, format!("edgepass {}\n", env!("CARGO_PKG_VERSION")));
    }
}

/// SIGTERM in the middle of a transfer: the listeners close at once, the transfer finishes
/// intact (bytes sent after the signal included), and the server exits 0 well within
/// `SHUTDOWN_TIMEOUT`.
#[test]
fn sigterm_stops_accepting_and_lets_a_transfer_finish() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let Binaries {
            mut server,
            slog,
            mut client,
            tunnel,
            public,
            ..
        } = binaries(target, &[]);

        const HALF: usize = 512 * 1024;
        let data = pattern(2 * HALF, 9);
        let s = std::sync::Arc::new(Async::<TcpStream>::connect(public).await.expect("connect"));
        let (go_tx, go_rx) = smol::channel::bounded::<()>(1);
        let writer = smol::spawn({
            let s = s.clone();
            let data = data.clone();
            async move {
                (&*s).write_all(&data[..HALF]).await.expect("first half");
                go_rx.recv().await.expect("go");
                (&*s)
                    .write_all(&data[HALF..])
                    .await
                    .expect("second half after SIGTERM");
                s.get_ref()
                    .shutdown(std::net::Shutdown::Write)
                    .expect("shutdown");
            }
        });
        // Mid-transfer: part of the echo is back.
        let mut back = vec![0u8; 64 * 1024];
        within(WAIT, (&*s).read_exact(&mut back))
            .await
            .expect("no echo before SIGTERM")
            .expect("read");

        let signalled = Instant::now();
        server.term();
        wait_line(&slog, "stopping");
        wait_refused(public).await;
        wait_refused(tunnel).await;

        go_tx.send(()).await.expect("writer gone");
        let mut rest = Vec::new();
        within(WAIT, (&*s).read_to_end(&mut rest))
            .await
            .expect("transfer did not finish")
            .expect("transfer broken by the shutdown");
        writer.await;
        back.extend_from_slice(&rest);
        assert_eq!(back.len(), data.len());
        assert!(back == data, "bytes changed across the shutdown");

        let code = server.exit_within(SHUTDOWN_TIMEOUT + Duration::from_secs(2));
        assert_eq!(code, Some(0), "server exit");
        let took = signalled.elapsed();
        assert!(
            took < SHUTDOWN_TIMEOUT,
            "the drain waited for nothing: {took:?}"
        );

        // SIGHUP (the terminal went away) stops as cleanly.
        client.signal("-HUP");
        assert_eq!(
            client.exit_within(Duration::from_secs(5)),
            Some(0),
            "client exit on SIGHUP"
        );
    });
}

/// A server and a client with `SHUTDOWN_TIMEOUT` set to `shutdown`, and a user connection
/// through them that has had its first echo and stays open.
async fn tunnel_with_a_user_open(
    target: SocketAddr,
    shutdown: &str,
) -> (Binaries, Async<TcpStream>) {
    let b = binaries(target, &[("SHUTDOWN_TIMEOUT", shutdown)]);
    let mut s = Async::<TcpStream>::connect(b.public)
        .await
        .expect("connect");
    s.write_all(b"hi").await.expect("write");
    let mut two = [0u8; 2];
    within(WAIT, s.read_exact(&mut two))
        .await
        .expect("no echo")
        .expect("read");
    (b, s)
}

/// A connection that stays open holds the exit back for `SHUTDOWN_TIMEOUT` (1 s here), no
/// longer; the exit code is still 0.
#[test]
fn sigterm_waits_at_most_shutdown_timeout_for_open_connections() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let (mut b, mut s) = tunnel_with_a_user_open(target, "1s").await;

        let signalled = Instant::now();
        b.server.term();
        let code = b.server.exit_within(Duration::from_secs(4));
        let took = signalled.elapsed();
        assert_eq!(code, Some(0), "server exit");
        assert!(
            took >= Duration::from_millis(900),
            "did not wait for the open one: {took:?}"
        );
        assert!(
            wait_line_opt(&b.slog, "still open"),
            "no log line about the closed rest"
        );
        // The user's connection went down with the process.
        let mut rest = Vec::new();
        let _ = within(WAIT, s.read_to_end(&mut rest))
            .await
            .expect("still open");
        b.client.term();
        assert_eq!(
            b.client.exit_within(Duration::from_secs(5)),
            Some(0),
            "client exit"
        );
    });
}

/// A second signal while a connection holds the stop back exits at once with code 1, and one
/// line says how many connections it cut.
#[test]
fn a_second_signal_exits_at_once_with_code_1() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let (mut b, _s) = tunnel_with_a_user_open(target, "30s").await;

        b.server.term();
        wait_line(&b.slog, "stopping");
        let signalled = Instant::now();
        b.server.term();
        assert_eq!(b.server.exit_within(Duration::from_secs(5)), Some(1));
        assert!(signalled.elapsed() < Duration::from_secs(5));
        wait_line(&b.slog, "second signal: exiting now, 1 connections cut");
        b.client.term();
        assert_eq!(
            b.client.exit_within(Duration::from_secs(5)),
            Some(0),
            "client exit"
        );
    });
}

/// A pipe whose reading end is already closed: every write to the other end fails with EPIPE.
fn reader_gone() -> std::process::Stdio {
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    drop(r);
    w.into()
}

#[test]
fn output_into_a_closed_pipe_is_dropped_not_a_crash() {
    // `edgepass --help | head -0`, say; and a bad URL with stderr gone: still exit 2.
    for (args, code) in [(&["--help"][..], 0), (&["--version"], 0), (&["ftp://x"], 2)] {
        let mut c = command(args, &[]);
        c.stdout(reader_gone()).stderr(reader_gone());
        let mut child = Child(c.spawn().expect("spawn edgepass"));
        let got = child.exit_within(Duration::from_secs(5));
        assert_eq!(got, Some(code), "{args:?}");
    }
}

/// A role that dials or accepts tunnel connections without a key warns that the key is the
/// port; a single-end forwarder, which has no tunnel, does not.
#[test]
fn only_a_tunnel_without_a_key_is_warned_about() {
    const WARNING: &str = "no key given";
    let started = |url: &str, first_line: &str| {
        let (_child, lines) = spawn(url, &[]);
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let done = line.contains(first_line);
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!("{url}: no line with {first_line:?} in {seen:?}");
    };
    let server = started("server://127.0.0.1:0/127.0.0.1:0", "server: tunnel on");
    assert!(server.iter().any(|l| l.contains(WARNING)), "{server:?}");
    let forwarder = started("client://127.0.0.1:0/127.0.0.1:9?mode=1", "forward: ");
    assert!(
        !forwarder.iter().any(|l| l.contains(WARNING)),
        "{forwarder:?}"
    );
}

/// `proxy=` on a reverse-flow server does nothing (the client dials the target): it says so.
#[test]
fn proxy_on_a_reverse_flow_server_is_pointed_to_the_client() {
    let (_server, lines) = spawn("server://k@127.0.0.1:0/127.0.0.1:0?proxy=1", &[]);
    let line = wait_line(&lines, "proxy=1");
    assert!(line.contains("set it in the client's URL"), "{line}");
}
