//! Tests of the command line: help, version, URL, relay flags and usage errors.

use super::*;
use crate::config::{parse, Role};

fn no_env(_: &str) -> Option<String> {
    None
}

fn run(args: &[&str]) -> Result<Command, CliError> {
    parse_args(args.iter().map(OsString::from).collect(), &no_env)
}

fn cfg(args: &[&str]) -> Config {
    match run(args) {
        Ok(Command::Run(cfg)) => cfg,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn url(u: &str) -> Config {
    parse(u, &no_env).unwrap()
}

#[test]
fn help_and_version() {
    let table: &[(&[&str], Command)] = &[
        (&["--help"], Command::Help),
        (&["-h"], Command::Help),
        (&["help"], Command::Help),
        (&["server://:1/:2", "--help"], Command::Help),
        (&["relay", "-port", "1", "-h"], Command::Help),
        (&["--version"], Command::Version),
        (&["-V"], Command::Version),
    ];
    for (args, want) in table {
        assert_eq!(&run(args).unwrap(), want, "{args:?}");
    }
}

#[test]
fn url_argument() {
    let u = "client://k@vps.example.com:10101/127.0.0.1:22?min=8";
    assert_eq!(cfg(&[u]), url(u));
}

#[test]
fn check_flag_anywhere() {
    let u = "client://k@vps.example.com:10101/127.0.0.1:22?min=8";
    for args in [&["--check", u][..], &[u, "--check"], &["-check", u]] {
        assert_eq!(run(args), Ok(Command::Check(url(u))), "{args:?}");
    }
    let relay = url("relay://0.0.0.0:4001?max-conns=5");
    let args = ["--check", "relay", "--max-conns", "5"];
    assert_eq!(run(&args), Ok(Command::Check(relay)));
    // The URL is still parsed: a bad one is refused as without the flag.
    assert_eq!(run(&["--check", "ftp://x:1"]), run(&["ftp://x:1"]));
}

#[test]
fn relay_flags() {
    let want = url("relay://0.0.0.0:4001?max-conns=1000&max-reservations=128");
    assert_eq!(
        cfg(&[
            "relay",
            "-port",
            "4001",
            "-max-conns",
            "1000",
            "-max-reservations",
            "128"
        ]),
        want
    );
    assert_eq!(
        cfg(&[
            "relay",
            "--port=4001",
            "--max-conns=1000",
            "--max-reservations",
            "128"
        ]),
        want
    );
    assert_eq!(
        cfg(&["relay", "-max-reservations=128", "--max-conns", "1000"]),
        want
    );

    let c = cfg(&["relay"]);
    assert_eq!(
        (c.role, c.tunnel.to_string(), c.key),
        (Role::Relay, "0.0.0.0:4001".into(), None)
    );

    let c = cfg(&[
        "relay",
        "--key",
        "-a/b@c%&?#",
        "--host",
        "::1",
        "-port",
        "0",
        "--log",
        "debug",
    ]);
    assert_eq!(c.key.as_deref(), Some("-a/b@c%&?#"));
    assert_eq!(c.tunnel.to_string(), "[::1]:0");
    assert_eq!(c.log, crate::config::LogLevel::Debug);

    let c = cfg(&[
        "relay",
        "--host",
        "relay.example.com",
        "--tls",
        "2",
        "--crt",
        "c.pem",
        "--key-file",
        "k y.pem",
        "--visit-key",
        "v&k",
        "--ttl",
        "10m",
        "--stats",
        "1m",
        "--max-per-ip",
        "2",
        "--max-circuits",
        "3",
        "--circuit-duration",
        "1h",
        "--circuit-bytes",
        "9",
        "--slot",
        "5",
        "--read",
        "1s",
        "--rate",
        "7",
        "--dial",
        "auto",
        "--dns",
        "1m",
    ]);
    let want = url(
        "relay://relay.example.com:4001?tls=2&crt=c.pem&key=k%20y.pem&visit-key=v%26k&ttl=10m\
         &stats=1m&max-per-ip=2&max-circuits=3&circuit-duration=1h&circuit-bytes=9&slot=5\
         &read=1s&rate=7&dial=auto&dns=1m",
    );
    assert_eq!(c, want);
}

#[test]
fn errors() {
    let table: &[(&[&str], &str)] = &[
        (&[], "missing URL"),
        (&["--frob"], "--frob"),
        (&["-frob=1"], "--frob"),
        (&["server://:1/:2", "extra"], "extra"),
        (&["server://:1/:2", "--log", "debug"], "--log"),
        (&["ftp://x:1"], "ftp"),
        (&["server://:1/:2?frob=1"], "frob"),
        (&["relay", "--frob", "1"], "--frob"),
        (&["relay", "--port", "99999"], "--port 99999"),
        (&["relay", "--port", "-1"], "--port -1"),
        (&["relay", "--port"], "--port"),
        (&["relay", "--port", "1", "-port", "2"], "--port"),
        (&["relay", "--key", ""], "--key"),
        (&["relay", "--host", "a/b"], "--host a/b"),
        (&["relay", "-max-conns", "abc"], "max-conns=abc"),
        (&["relay", "--tls", "2"], "crt"),
        (&["relay", "extra"], "extra"),
        (&["relay", "--name", "x"], "--name"),
    ];
    for (args, part) in table {
        match run(args) {
            Ok(c) => panic!("{args:?}: accepted as {c:?}"),
            Err(e) => {
                let shown = e.to_string();
                assert!(shown.contains(part), "{args:?}: {shown:?} lacks {part:?}");
                assert!(!shown.contains('\n'), "{args:?}: {shown:?}");
            }
        }
    }
}

#[cfg(unix)]
#[test]
fn non_utf8_argument() {
    use std::os::unix::ffi::OsStringExt;
    let args = vec![OsString::from_vec(vec![b's', 0xff])];
    let e = parse_args(args, &no_env).unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
}

#[test]
fn environment_reaches_the_parser() {
    let env = |k: &str| (k == "NP_MAX_POOL_CAPACITY").then(|| "9".to_owned());
    let args = vec![OsString::from("server://:1/:2")];
    match parse_args(args, &env).unwrap() {
        Command::Run(c) => assert_eq!(c.max, 9),
        other => panic!("{other:?}"),
    }
}

#[test]
fn help_text() {
    for line in HELP.lines() {
        assert!(line.chars().count() < 100, "too long: {line}");
    }
    // A section the text points to ("see MODES below") is there.
    for (i, _) in HELP.match_indices("see ") {
        let section = HELP[i + 4..].split(' ').next().unwrap_or_default();
        if section.chars().all(|c| c.is_ascii_uppercase()) {
            assert!(
                HELP.contains(&format!("\n{section}")),
                "no {section} section"
            );
        }
    }
    let keys = [
        "log=",
        "tls=",
        "crt=",
        "key=",
        "ca=",
        "sni=",
        "min=",
        "max=",
        "slot=",
        "read=",
        "mode=",
        "rate=",
        "proxy=",
        "dial=",
        "dns=",
        "notcp=",
        "noudp=",
        "name=",
        "max-conns=",
        "max-reservations=",
        "max-per-ip=",
        "max-circuits=",
        "circuit-duration=",
        "circuit-bytes=",
        "ttl=",
        "stats=",
        "visit-key=",
    ];
    let vars = [
        "SEMAPHORE_LIMIT",
        "TCP_DATA_BUF_SIZE",
        "UDP_DATA_BUF_SIZE",
        "HANDSHAKE_TIMEOUT",
        "TCP_DIAL_TIMEOUT",
        "UDP_READ_TIMEOUT",
        "POOL_GET_TIMEOUT",
        "MIN_POOL_INTERVAL",
        "MAX_POOL_INTERVAL",
        "REPORT_INTERVAL",
        "SERVICE_COOLDOWN",
        "SHUTDOWN_TIMEOUT",
        "MIN_POOL_CAPACITY",
        "MAX_POOL_CAPACITY",
    ];
    for word in keys
        .iter()
        .chain(&vars)
        .chain(&["server://", "client://", "relay://", "visit://"])
    {
        assert!(HELP.contains(word), "help lacks {word}");
    }
    // Every example URL in the help parses.
    let examples: Vec<&str> = HELP
        .split('\'')
        .filter(|s| s.contains("://") && !s.contains(' '))
        .collect();
    assert!(examples.len() >= 5, "{examples:?}");
    for example in examples {
        assert!(parse(example, &no_env).is_ok(), "{example}");
    }
    assert!(VERSION.starts_with("edgepass "));
}
