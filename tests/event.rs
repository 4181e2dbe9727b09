//! `log=event`: the binary prints NodePass's CHECK_POINT line on stdout every REPORT_INTERVAL.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;

use common::*;
use smol::future::FutureExt;
use smol::Timer;

/// The fields of a CHECK_POINT line, in NodePass's order, each a number (`PING` in ms).
fn checkpoint_fields(line: &str) -> Option<Vec<u64>> {
    let names = [
        "MODE", "PING", "POOL", "TCPS", "UDPS", "TCPRX", "TCPTX", "UDPRX", "UDPTX",
    ];
    let mut parts = line.strip_prefix("CHECK_POINT|")?.split('|');
    let mut out = Vec::new();
    for name in names {
        let v = parts.next()?.strip_prefix(name)?.strip_prefix('=')?;
        let v = if name == "PING" {
            v.strip_suffix("ms")?
        } else {
            v
        };
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        out.push(v.parse().ok()?);
    }
    parts.next().is_none().then_some(out)
}

#[test]
fn checkpoint_parser_is_strict() {
    let ok = "CHECK_POINT|MODE=2|PING=0ms|POOL=4|TCPS=0|UDPS=0|TCPRX=12|TCPTX=12|UDPRX=0|UDPTX=0";
    assert_eq!(
        checkpoint_fields(ok),
        Some(vec![2, 0, 4, 0, 0, 12, 12, 0, 0])
    );
    assert_eq!(checkpoint_fields(&ok.replace("PING=0ms", "PING=0")), None);
    assert_eq!(checkpoint_fields(&ok.replace("|UDPTX=0", "")), None);
    assert_eq!(checkpoint_fields(&format!("{ok}|X=1")), None);
    assert_eq!(checkpoint_fields(&ok.replace("POOL=4", "POOL=")), None);
}

#[test]
fn client_binary_prints_checkpoint_lines() {
    smol::block_on(async {
        let (target, _echo) = echo_server();
        let server = start("server://k@127.0.0.1:0/127.0.0.1:0").await;
        let tun = server.tunnel.unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgepass"))
            .arg(format!("client://k@{tun}/{target}?log=event"))
            .env("REPORT_INTERVAL", "1s")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = smol::channel::bounded::<String>(64);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send_blocking(line).is_err() {
                    break;
                }
            }
        });
        let st = server.stats.clone();
        wait_until("the client's pool", || st.pool_idle.load(Relaxed) > 0).await;
        let public = server.public.unwrap();
        assert_eq!(round_trip(public, b"0123456789").await, b"0123456789");
        // A line showing the warm pool and the bytes just moved (the first lines may predate them).
        let found = async {
            while let Ok(line) = rx.recv().await {
                let f = checkpoint_fields(&line)
                    .unwrap_or_else(|| panic!("stdout line is not a CHECK_POINT: {line}"));
                if f[2] > 0 && f[5] >= 10 && f[6] >= 10 {
                    return Some(f);
                }
            }
            None
        }
        .or(async {
            Timer::after(WAIT).await;
            None
        })
        .await;
        let _ = child.kill();
        let _ = child.wait();
        let f = found.expect("no CHECK_POINT line with the pool and the bytes");
        assert_eq!(f[0], 2, "a client in a dual-end tunnel reports MODE=2");
        assert_eq!((f[3], f[4]), (0, 0), "no session open");
    });
}
