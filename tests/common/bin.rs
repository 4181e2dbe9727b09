//! The real binary as a child process: start a role, follow its log, signal it, read its
//! resident memory and descriptors.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use super::WAIT;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_edgepass");

/// The binary to run: `EDGEPASS_TEST_BIN` if set (an A/B run against another build), else
/// this package's.
pub fn bin() -> String {
    std::env::var("EDGEPASS_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// A child process that is killed if the test ends early, so none outlives it.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Child {
    /// Wait at most `bound` for the process to exit; returns its exit code.
    pub fn exit_within(&mut self, bound: Duration) -> Option<i32> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status.code().expect("killed by a signal"));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send SIGTERM through kill(1): the tests add no crates.
    pub fn term(&self) {
        self.signal("-TERM");
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.0.wait();
    }

    /// Send `sig` ("-STOP", "-CONT", ...) through kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill {sig} failed");
    }

    /// Its pid as /proc names it.
    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

/// The binary with `args` and an environment of `env` only (nothing inherited that could
/// change its behaviour); stdin closed, stdout and stderr piped.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Run to completion within 5 s; returns (exit code, stdout, stderr).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Child(command(args, env).spawn().expect("spawn edgepass"));
    let code = child
        .exit_within(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("{args:?} still running after 5 s"));
    // It has exited: the pipes hold everything it wrote and then EOF.
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut p) = child.0.stdout.take() {
        p.read_to_string(&mut out).expect("stdout");
    }
    if let Some(mut p) = child.0.stderr.take() {
        p.read_to_string(&mut err).expect("stderr");
    }
    (code, out, err)
}

/// Start `cmd`; its stderr lines arrive on the receiver (read by a thread, so a chatty log
/// can never fill the pipe and stall the process).
pub fn spawn_cmd(mut c: Command) -> (Child, Receiver<String>) {
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn edgepass");
    let stderr = child.stderr.take().expect("stderr pipe");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        // Keeps draining after the receiver is gone, so the log stays complete for a test
        // that reads it late (a closed stderr drops lines; tests/faults.rs checks that).
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Child(child), rx)
}

/// Start a role from `url` with environment `env` only; see [`spawn_cmd`].
pub fn spawn(url: &str, env: &[(&str, &str)]) -> (Child, Receiver<String>) {
    spawn_cmd(command(&[url], env))
}

/// The first stderr line containing `needle`, waiting at most [`WAIT`].
pub fn wait_line(rx: &Receiver<String>, needle: &str) -> String {
    wait_line_for(rx, needle, WAIT).unwrap_or_else(|| panic!("no stderr line with {needle:?}"))
}

/// The first stderr line containing `needle` within `bound`, if any.
pub fn wait_line_for(rx: &Receiver<String>, needle: &str, bound: Duration) -> Option<String> {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Whether a stderr line containing `needle` arrives within [`WAIT`] (until the pipe closes).
pub fn wait_line_opt(rx: &Receiver<String>, needle: &str) -> bool {
    wait_line_for(rx, needle, WAIT).is_some()
}

/// Drop every line received so far.
pub fn drain(rx: &Receiver<String>) {
    while rx.try_recv().is_ok() {}
}

/// `... server: tunnel on A, users on B` -> (A, B).
pub fn server_addrs(line: &str) -> (SocketAddr, SocketAddr) {
    let at = line.find("tunnel on ").expect("tunnel on") + "tunnel on ".len();
    let (tunnel, users) = line[at..].split_once(", users on ").expect("users on");
    (
        tunnel.trim().parse().expect("tunnel addr"),
        users
            .split_whitespace()
            .next()
            .unwrap_or("")
            .parse()
            .expect("users addr"),
    )
}

/// A server and a client binary with the session up.
pub struct Binaries {
    /// The server process.
    pub server: Child,
    /// The server's stderr lines.
    pub slog: Receiver<String>,
    /// The client process.
    pub client: Child,
    /// The client's stderr lines.
    pub clog: Receiver<String>,
    /// The server's tunnel port.
    pub tunnel: SocketAddr,
    /// The server's public port.
    pub public: SocketAddr,
}

/// A server and a client binary (key `s3cret`, `log=info`, `query` appended to both URLs)
/// forwarding to `target`, with the session up.
pub fn binaries_q(target: SocketAddr, query: &str, env: &[(&str, &str)]) -> Binaries {
    let (server, slog) = spawn(
        &format!("server://s3cret@127.0.0.1:0/127.0.0.1:0?log=info{query}"),
        env,
    );
    let (tunnel, public) = server_addrs(&wait_line(&slog, "server: tunnel on"));
    let (client, clog) = spawn(
        &format!("client://s3cret@{tunnel}/{target}?log=info{query}"),
        env,
    );
    wait_line(&clog, "session up");
    wait_line(&slog, "session up");
    Binaries {
        server,
        slog,
        client,
        clog,
        tunnel,
        public,
    }
}

/// [`binaries_q`] with no extra query.
pub fn binaries(target: SocketAddr, env: &[(&str, &str)]) -> Binaries {
    binaries_q(target, "", env)
}
