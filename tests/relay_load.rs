//! Load figures for the relay (not in CI): 200 concurrent circuits through one relay process.
//!
//! Run with the release binary: `cargo test --release --test relay_load -- --ignored --nocapture`.
//! The relay runs as a child process (so its RSS is its own); devices, visitors and the echo
//! target run in this process. `LOAD_MB` sets the megabytes each circuit sends (default 2).
#![cfg(feature = "relay")]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Timer};

const DEVICES: usize = 4;
const PER_DEVICE: usize = 50;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One circuit: send `len` bytes and read them all back (echo), at the same time.
async fn circuit(addr: SocketAddr, len: usize) -> usize {
    let s = Arc::new(Async::<TcpStream>::connect(addr).await.unwrap());
    let w = s.clone();
    let writer = smol::spawn(async move {
        let chunk = vec![0x5au8; 65536];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            (&*w).write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        w.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    loop {
        let n = (&*s).read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    writer.await;
    got
}

#[test]
#[ignore = "load figures; run with --release --ignored --nocapture"]
fn two_hundred_concurrent_circuits() {
    let mb: usize = std::env::var("LOAD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = format!(
        "relay://k@{relay_addr}?log=warn&max-circuits=64&max-per-ip=64&max-conns=2000&slot=1024"
    );
    let child = Command::new(env!("CARGO_BIN_EXE_edgepass"))
        .arg(&url)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _kill = Kill(child);
    smol::block_on(async {
        let deadline = Instant::now() + WAIT;
        while Async::<TcpStream>::connect(relay_addr).await.is_err() {
            assert!(Instant::now() < deadline, "relay did not start");
            Timer::after(Duration::from_millis(20)).await;
        }
        let idle_rss = procfs::rss_kib(&pid.to_string());
        let (target, _echo) = echo_server();
        let mut keep = Vec::new();
        let mut visitors = Vec::new();
        for i in 0..DEVICES {
            let name = format!("load-{i}");
            let q = format!("?name={name}&min=60&max=64&log=warn");
            keep.push(start(&format!("client://k@{relay_addr}/{target}{q}")).await);
            let v = start(&format!(
                "visit://k@{relay_addr}/127.0.0.1:0?name={name}&log=warn"
            ))
            .await;
            visitors.push(v.public.unwrap());
            keep.push(v);
        }
        for d in keep.iter().step_by(2) {
            let s = d.stats.clone();
            wait_until("warm pools", || s.pool_idle.load(Relaxed) >= 50).await;
        }
        let warm_rss = procfs::rss_kib(&pid.to_string());
        let peak = Arc::new(AtomicU64::new(warm_rss));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            smol::spawn(async move {
                while !done.load(Relaxed) {
                    peak.fetch_max(procfs::rss_kib(&pid.to_string()), Relaxed);
                    Timer::after(Duration::from_millis(20)).await;
                }
            })
        };
        let len = mb << 20;
        let start_at = Instant::now();
        let tasks: Vec<_> = (0..DEVICES * PER_DEVICE)
            .map(|i| smol::spawn(circuit(visitors[i % DEVICES], len)))
            .collect();
        let mut total = 0usize;
        for t in tasks {
            assert_eq!(t.await, len);
            total += len;
        }
        let secs = start_at.elapsed().as_secs_f64();
        done.store(true, Relaxed);
        sampler.await;
        // Each byte crosses the relay twice: visitor→device and back.
        let through = 2.0 * total as f64 / secs / 1e6;
        println!(
            "relay load: {} circuits x {mb} MiB echoed in {secs:.2} s: {through:.0} MB/s through the relay; \
             relay RSS idle {idle_rss} KiB, warm {warm_rss} KiB, peak {} KiB",
            DEVICES * PER_DEVICE,
            peak.load(Relaxed)
        );
    });
}
