//! Faults with the real binaries: kill -9 of the client or the server in the middle of
//! transfers (the survivor logs it, keeps running, and service is back within 5 s of the
//! peer's return), SIGTERM with several checksummed transfers in flight (no byte lost), a
//! server whose stderr reader went away (its log lines are dropped; it keeps serving), and
//! keepalive on the connections the server accepts (`TCP_KEEPALIVE`).
//! Timings use `SERVICE_COOLDOWN=100ms`; with the default 3 s the client's first retry comes
//! 2.25–3.75 s after a loss (jittered, doubling while the server stays away).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bin::*;
use common::procfs::tcp_timer;
use common::*;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::Async;

const ENV: &[(&str, &str)] = &[("SERVICE_COOLDOWN", "100ms"), ("REPORT_INTERVAL", "1s")];

/// A transfer in flight: half of `data` written and some echo read; `finish` writes the rest
/// and returns everything read, or the error that broke it.
struct InFlight {
    s: Arc<Async<TcpStream>>,
    go: smol::channel::Sender<()>,
    writer: smol::Task<std::io::Result<()>>,
    back: Vec<u8>,
}

async fn start_transfer(public: SocketAddr, data: Vec<u8>) -> InFlight {
    let half = data.len() / 2;
    let s = Arc::new(Async::<TcpStream>::connect(public).await.expect("connect"));
    let (go, went) = smol::channel::bounded::<()>(1);
    let w = s.clone();
    let writer = smol::spawn(async move {
        (&*w).write_all(&data[..half]).await?;
        let _ = went.recv().await;
        (&*w).write_all(&data[half..]).await?;
        w.get_ref().shutdown(std::net::Shutdown::Write)
    });
    let mut back = vec![0u8; 64 * 1024];
    within(WAIT, (&*s).read_exact(&mut back))
        .await
        .expect("no echo")
        .expect("read");
    InFlight {
        s,
        go,
        writer,
        back,
    }
}

impl InFlight {
    async fn finish(mut self) -> std::io::Result<Vec<u8>> {
        let _ = self.go.send(()).await;
        let mut rest = Vec::new();
        within(WAIT, (&*self.s).read_to_end(&mut rest))
            .await
            .ok_or(std::io::ErrorKind::TimedOut)??;
        self.writer.await?;
        self.back.extend_from_slice(&rest);
        Ok(self.back)
    }
}

/// Round trips through `public` until one comes back intact; returns how long that took.
async fn until_flowing(public: SocketAddr) -> Duration {
    let t0 = Instant::now();
    let data = pattern(4096, 5);
    loop {
        let ok = async {
            let mut s = Async::<TcpStream>::connect(public).await.ok()?;
            s.write_all(&data).await.ok()?;
            s.get_ref().shutdown(std::net::Shutdown::Write).ok()?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.ok()?;
            (back == data).then_some(())
        };
        if within(Duration::from_secs(2), ok).await.flatten().is_some() {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < WAIT, "service did not come back");
        smol::Timer::after(Duration::from_millis(20)).await;
    }
}

#[test]
fn client_killed_mid_transfer_server_survives_and_a_new_client_serves_within_5s() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let mut b = binaries(target, ENV);
        let t = start_transfer(b.public, pattern(4 << 20, 1)).await;
        drain(&b.slog);
        b.client.kill9();
        let line = wait_line(&b.slog, "ended");
        assert!(line.contains("session with"), "{line}");
        // The cut transfer ends (an error or a short read), it does not hang.
        let _ = t.finish().await;
        assert!(b.server.running(), "the server died with its client");

        let back = Instant::now();
        let (_client, clog) = spawn(
            &format!("client://s3cret@{}/{target}?log=info", b.tunnel),
            ENV,
        );
        wait_line(&clog, "session up");
        let flowing = until_flowing(b.public).await;
        let took = back.elapsed();
        eprintln!("FIGURE kill -9 client: service back {took:?} after the restart ({flowing:?} of round trips)");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(b.server.running());
    });
}

#[test]
fn server_killed_mid_transfer_client_retries_and_serves_within_5s_of_its_return() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let mut b = binaries(target, ENV);
        let t = start_transfer(b.public, pattern(4 << 20, 2)).await;
        drain(&b.clog);
        b.server.kill9();
        let line = wait_line(&b.clog, "ended");
        assert!(line.contains("session with"), "{line}");
        let _ = t.finish().await;
        // It keeps retrying while nothing listens.
        wait_line(&b.clog, "cannot open a session");
        assert!(b.client.running(), "the client died with its server");

        let port = b.tunnel.port();
        let back = Instant::now();
        let (mut server, slog) = spawn(
            &format!("server://s3cret@127.0.0.1:{port}/127.0.0.1:0?log=info"),
            ENV,
        );
        let (_, public) = server_addrs(&wait_line(&slog, "server: tunnel on"));
        until_flowing(public).await;
        let took = back.elapsed();
        eprintln!("FIGURE kill -9 server: service back {took:?} after the server's restart");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(server.running() && b.client.running());
    });
}

/// SIGTERM with four checksummed 2 MiB transfers in flight: all finish intact (the bytes sent
/// after the signal included) and the server exits 0 within `SHUTDOWN_TIMEOUT`.
#[test]
fn sigterm_with_concurrent_transfers_loses_no_byte() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let mut b = binaries(target, &[]);
        let mut flights = Vec::new();
        let mut datas = Vec::new();
        for i in 0..4 {
            let data = pattern(2 << 20, 100 + i);
            flights.push(start_transfer(b.public, data.clone()).await);
            datas.push(data);
        }
        b.server.term();
        wait_line(&b.slog, "stopping");
        let finished: Vec<_> = flights
            .into_iter()
            .map(|f| smol::spawn(f.finish()))
            .collect();
        for (i, (f, data)) in finished.into_iter().zip(datas).enumerate() {
            let back = f
                .await
                .unwrap_or_else(|e| panic!("transfer {i} broken: {e}"));
            assert_eq!(back.len(), data.len(), "transfer {i}");
            assert!(
                back == data,
                "transfer {i}: bytes changed across the shutdown"
            );
        }
        assert_eq!(b.server.exit_within(Duration::from_secs(7)), Some(0));
        b.client.term();
        assert_eq!(b.client.exit_within(Duration::from_secs(5)), Some(0));
    });
}

#[test]
fn a_server_whose_stderr_reader_went_away_keeps_serving() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let mut c = command(&["server://s3cret@127.0.0.1:0/127.0.0.1:0?log=info"], ENV);
        c.stdout(std::process::Stdio::null());
        let mut server = Child(c.spawn().expect("spawn edgepass"));
        let mut lines = BufReader::new(server.0.stderr.take().expect("stderr pipe")).lines();
        let first = lines.next().expect("a first line").expect("utf-8");
        let (tunnel, public) = server_addrs(&first);
        // Nobody reads the server's stderr any more: each line it logs from here on fails
        // with EPIPE (`edgepass ... 2>&1 | head -1`, a log daemon that restarted).
        drop(lines);

        // A session (the server logs it), a hostile peer (a warning), and then service.
        let (_client, clog) = spawn(&format!("client://s3cret@{tunnel}/{target}?log=info"), ENV);
        wait_line(&clog, "session up");
        let out =
            hostile::send_and_wait_close(tunnel, b"GET / HTTP/1.0\r\n\r\n".to_vec(), WAIT).await;
        assert!(
            out.closed_after.is_some(),
            "the hostile peer was not closed"
        );
        let data = pattern(64 << 10, 7);
        assert!(
            round_trip(public, &data).await == data,
            "the echo came back wrong"
        );
        assert!(server.running(), "the server died of a log line");
    });
}

/// The server's end of a user connection carries a keepalive timer of `TCP_KEEPALIVE` (its
/// listener's options, copied by the kernel at accept), and none with `TCP_KEEPALIVE=0`.
#[test]
fn accepted_connections_get_keepalive_unless_it_is_off() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        for (value, want) in [("7s", Some(7.0)), ("0", None)] {
            let env: Vec<_> = ENV
                .iter()
                .copied()
                .chain([("TCP_KEEPALIVE", value)])
                .collect();
            let b = binaries(target, &env);
            let s = echo_once(b.public, b"ping").await;
            let me = s.get_ref().local_addr().expect("addr").port();
            // Until the echo's last ACK is in, the retransmit timer runs instead.
            let timer = || tcp_timer(b.public.port(), me).filter(|t| t.0 != 1);
            wait_until("the server socket's timer to settle", || timer().is_some()).await;
            let (kind, left) = timer().expect("the server's end of the connection");
            match want {
                Some(idle) => assert!(
                    kind == 2 && left <= idle && left > idle - 3.0,
                    "TCP_KEEPALIVE={value}: timer kind {kind}, {left} s left"
                ),
                None => assert_eq!(kind, 0, "TCP_KEEPALIVE=0: timer kind {kind}, {left} s"),
            }
        }
    });
}
