//! Table-driven tests of the URL and environment parser.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn no_env(_: &str) -> Option<String> {
    None
}

fn ok(url: &str) -> Config {
    match parse(url, &no_env) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{url}: {e}"),
    }
}

fn v4(a: [u8; 4], port: u16) -> HostPort {
    HostPort {
        host: Host::Ip(IpAddr::V4(Ipv4Addr::from(a))),
        port,
    }
}

fn named(name: &str, port: u16) -> HostPort {
    HostPort {
        host: Host::Name(name.to_owned()),
        port,
    }
}

#[test]
fn server_defaults() {
    let cfg = ok("server://:10101/127.0.0.1:8080");
    assert_eq!(cfg.role, Role::Server);
    assert_eq!(cfg.key, None);
    assert_eq!(cfg.key_bytes(), b"10101");
    assert_eq!(cfg.tunnel, v4([0, 0, 0, 0], 10101));
    assert_eq!(cfg.targets, vec![v4([127, 0, 0, 1], 8080)]);
    assert_eq!(cfg.log, LogLevel::Info);
    assert_eq!(cfg.tls, TlsMode::Off);
    assert_eq!(
        (cfg.min, cfg.max, cfg.slot),
        (DEFAULT_MIN, DEFAULT_MAX, DEFAULT_SLOT)
    );
    assert_eq!(
        (cfg.read, cfg.rate, cfg.dial, cfg.name),
        (None, None, None, None)
    );
    assert_eq!(
        (cfg.mode, cfg.proxy, cfg.notcp, cfg.noudp),
        (0, 0, false, false)
    );
    assert_eq!(cfg.dns, DEFAULT_DNS);
    assert_eq!(cfg.tuning, Tuning::default());
    assert_eq!(cfg.relay, RelayLimits::default());
}

#[test]
fn good_urls() {
    let cfg = ok("client://s3cr%40t@[2001:db8::1]:10101/[::1]:22,db.lan:5432,10.0.0.2:1");
    assert_eq!(cfg.role, Role::Client);
    assert_eq!(cfg.key.as_deref(), Some("s3cr@t"));
    assert_eq!(cfg.key_bytes(), b"s3cr@t");
    let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(cfg.tunnel.host, Host::Ip(IpAddr::V6(v6)));
    assert_eq!(cfg.tunnel.to_string(), "[2001:db8::1]:10101");
    let shown: Vec<String> = cfg.targets.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["[::1]:22", "db.lan:5432", "10.0.0.2:1"]);

    let cfg = ok("relay://hub-key@0.0.0.0");
    assert_eq!(
        (cfg.role, cfg.tunnel.port),
        (Role::Relay, DEFAULT_RELAY_PORT)
    );
    assert!(cfg.targets.is_empty());
    assert_eq!(
        ok("relay://relay.example.com:443/").tunnel,
        named("relay.example.com", 443)
    );
    assert_eq!(ok("RELAY://[::]").tunnel.to_string(), "[::]:4001");

    let cfg = ok("visit://k@relay.example.com:4001/127.0.0.1:2222?name=cam-7");
    assert_eq!(cfg.role, Role::Visit);
    assert_eq!(cfg.name.as_deref(), Some("cam-7"));
    assert_eq!(cfg.targets, vec![v4([127, 0, 0, 1], 2222)]);

    let cfg = ok("client://k@relay.example.com:4001/127.0.0.1:554?name=cam_7.front");
    assert_eq!(cfg.name.as_deref(), Some("cam_7.front"));
    assert_eq!(ok("server://host.:1/x:2").tunnel, named("host.", 1));
}

#[test]
fn every_key() {
    let cfg = ok(
        "server://k@:443/:8080?log=event&tls=2&crt=/etc/ep/c.pem&key=/etc/ep/k%20y.pem\
         &min=0&max=65536&slot=7&read=1m30s&mode=2&rate=100\
         &proxy=2&dial=192.0.2.7&dns=0&notcp=1&noudp=0&name=a&max-conns=5\
         &max-reservations=6&max-per-ip=1&max-circuits=2&circuit-duration=2m\
         &circuit-bytes=1048576&ttl=10m&stats=1s&visit-key=v%26k&&",
    );
    assert_eq!(cfg.log, LogLevel::Event);
    assert_eq!(cfg.tls, TlsMode::Files);
    assert_eq!(cfg.crt.as_deref(), Some("/etc/ep/c.pem"));
    assert_eq!(cfg.key_file.as_deref(), Some("/etc/ep/k y.pem"));
    assert_eq!((cfg.min, cfg.max, cfg.slot), (0, 65536, 7));
    assert_eq!(cfg.read, Some(Duration::from_secs(90)));
    assert_eq!((cfg.mode, cfg.rate, cfg.proxy), (2, Some(100), 2));
    assert_eq!(cfg.dial, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))));
    assert_eq!(cfg.dns, Duration::ZERO);
    assert_eq!((cfg.notcp, cfg.noudp), (true, false));
    assert_eq!(cfg.name.as_deref(), Some("a"));
    let want = RelayLimits {
        max_conns: 5,
        max_reservations: 6,
        max_per_ip: 1,
        max_circuits: 2,
        circuit_duration: Some(Duration::from_secs(120)),
        circuit_bytes: Some(1 << 20),
        ttl: Duration::from_secs(600),
        stats: Duration::from_secs(1),
        visit_key: Some("v&k".to_owned()),
    };
    assert_eq!(cfg.relay, want);

    let cfg = ok("client://k@h:1/t:2?ca=ca.pem&sni=vps.example.com");
    assert_eq!(cfg.ca.as_deref(), Some("ca.pem"));
    assert_eq!(cfg.sni.as_deref(), Some("vps.example.com"));

    let cfg = ok("client://h:1/t:2?read=0&rate=0&dial=auto&circuit-duration=0&circuit-bytes=0");
    assert_eq!((cfg.read, cfg.rate, cfg.dial), (None, None, None));
    assert_eq!(
        (cfg.relay.circuit_duration, cfg.relay.circuit_bytes),
        (None, None)
    );
    for (level, want) in [
        ("none", LogLevel::None),
        ("debug", LogLevel::Debug),
        ("info", LogLevel::Info),
        ("warn", LogLevel::Warn),
        ("error", LogLevel::Error),
    ] {
        assert_eq!(ok(&format!("client://h:1/t:2?log={level}")).log, want);
    }
    assert_eq!(ok("server://:1/:2?tls=1").tls, TlsMode::SelfSigned);
    // tls=2 on a client needs no files: it verifies with `ca`/system roots.
    assert_eq!(ok("client://h:1/t:2?tls=2").tls, TlsMode::Files);
}

#[test]
fn port_0_is_fine_where_it_is_listened_on() {
    for url in [
        "server://k@127.0.0.1:0/127.0.0.1:0",
        "relay://k@127.0.0.1:0",
        "visit://k@h:5/127.0.0.1:0?name=cam",
        // A client that may forward locally listens on its first address.
        "client://127.0.0.1:0/t:2",
        "client://k@127.0.0.1:0/t:2?mode=1",
    ] {
        ok(url);
    }
    assert!(!ok("client://k@h:1/t:2").may_forward_locally());
    assert!(ok("client://h:1/t:2").may_forward_locally());
}

#[test]
fn bad_inputs() {
    let table: &[(&str, &str)] = &[
        ("ftp://h:1/t:2", "ftp"),
        ("http://h:1/t:2", "http"),
        ("server:/h:1/t:2", "server:/h:1/t:2"),
        ("h:1", "h:1"),
        ("", ""),
        ("server://h:99999/t:2", "99999"),
        ("server://h:1/t:65536", "t:65536"),
        ("server://h:abc/t:2", "h:abc"),
        ("server://h:-1/t:2", "h:-1"),
        ("server://h/t:2", "h"),
        ("server://h:/t:2", "h:"),
        ("server://::1:5/t:2", "::1:5"),
        ("server://[::1/t:2", "[::1"),
        ("server://[::1]5/t:2", "[::1]5"),
        ("server://[zz]:5/t:2", "[zz]:5"),
        ("server://bad_host:5/t:2", "bad_host:5"),
        ("server://a..b:5/t:2", "a..b:5"),
        ("server://1.2.3.999:5/t:2", "1.2.3.999:5"),
        ("server://@h:1/t:2", "@"),
        ("server://k%zz@h:1/t:2", "***@"),
        ("server://", "server://"),
        ("server://h:1", "server://h:1"),
        ("server://h:1/", "server://h:1/"),
        ("server://h:1/a:1,", "a:1,"),
        ("client://h:1?min=1", "client://h:1"),
        ("relay://h:1/t:2", "relay://h:1/t:2"),
        ("visit://h:1/t:2", "name"),
        ("visit://h:1/a:2,b:3?name=x", "visit://h:1/a:2,b:3"),
        ("visit://h:1?name=x", "visit://h:1"),
        ("server://h:1/t:2?frob=1", "frob"),
        ("server://h:1/t:2?log=info&log=debug", "log"),
        ("server://h:1/t:2?log", "log"),
        ("server://h:1/t:2?log=loud", "log=loud"),
        ("server://h:1/t:2?read=5x", "read=5x"),
        ("server://h:1/t:2?read=5", "read=5"),
        ("server://h:1/t:2?dns=-5s", "dns=-5s"),
        ("server://h:1/t:2?min=-1", "min=-1"),
        ("server://h:1/t:2?min=+1", "min=+1"),
        ("server://h:1/t:2?slot=0", "slot=0"),
        ("server://h:1/t:2?slot=0x10", "slot=0x10"),
        ("server://h:1/t:2?max=0", "max=0"),
        ("server://h:1/t:2?max=99999999999999999999999", "max=9999"),
        ("server://h:1/t:2?min=9&max=8", "min=9&max=8"),
        ("server://h:1/t:2?tls=2&crt=c&key=k&ca=ca.pem", "ca"),
        ("relay://h:1?sni=name", "sni"),
        ("client://k@h:1/t:2?tls=1&ca=ca.pem", "ca"),
        ("server://h:1/t:2?notcp=1&noudp=1", "notcp=1&noudp=1"),
        ("visit://h:1/t:2?name=x&notcp=1&noudp=1", "notcp=1&noudp=1"),
        ("server://h:1/t:2?min=65", "min=65&max=64"),
        ("server://h:1/t:2?tls=3", "tls=3"),
        ("server://h:1/t:2?tls=2", "crt"),
        ("server://h:1/t:2?tls=2&crt=c.pem", "key"),
        ("relay://h:1?tls=2&key=k.pem", "crt"),
        ("server://h:1/t:2?mode=3", "mode=3"),
        ("server://h:1/t:2?proxy=9", "proxy=9"),
        ("server://h:1/t:2?rate=4294967296", "rate=4294967296"),
        ("server://h:1/t:2?dial=host", "dial=host"),
        ("server://h:1/t:2?notcp=true", "notcp=true"),
        ("server://h:1/t:2?noudp=2", "noudp=2"),
        ("server://h:1/t:2?crt=", "crt="),
        ("server://h:1/t:2?sni=%", "sni=%"),
        ("client://h:1/t:2?name=", "name="),
        ("client://h:1/t:2?name=cam/7", "name=cam"),
        ("client://h:1/t:2?name=cam%207", "name=cam%207"),
        ("relay://h:1?max-conns=0", "max-conns=0"),
        ("relay://h:1?ttl=0", "ttl=0"),
        ("relay://h:1?stats=1", "stats=1"),
        ("relay://h:1?circuit-bytes=-1", "circuit-bytes=-1"),
        ("relay://h:1?visit-key=", "visit-key="),
        // Port 0 where an address is dialed.
        ("client://k@127.0.0.1:0/127.0.0.1:22", "127.0.0.1:0"),
        ("client://h:0/t:2?mode=2", "h:0"),
        ("client://h:0/t:2?name=cam", "h:0"),
        ("client://h:0/t:2?tls=1", "h:0"),
        ("client://k@h:5/127.0.0.1:0", "127.0.0.1:0"),
        ("client://h:5/a:1,b:0?mode=1", "b:0"),
        ("client://h:0/t:0?mode=1", "t:0"),
        ("visit://k@h:0/127.0.0.1:0?name=cam", "h:0"),
        ("server://k@h:1/127.0.0.1:0?mode=2", "127.0.0.1:0"),
        // Certificate files without tls=2, or on a role that has none.
        ("server://k@h:1/t:2?crt=/c.pem&key=/k.pem", "crt"),
        ("server://k@h:1/t:2?tls=1&key=/k.pem", "key"),
        ("relay://k@h:1?key=/etc/edgepass.key", "key"),
        ("client://k@h:1/t:2?tls=2&crt=/c.pem&key=/k.pem", "crt"),
    ];
    for &(url, part) in table {
        match parse(url, &no_env) {
            Ok(cfg) => panic!("{url}: accepted as {cfg:?}"),
            Err(e) => assert!(
                e.part.contains(part),
                "{url}: part {:?} lacks {part:?}",
                e.part
            ),
        }
    }
    let long_name = format!("client://h:1/t:2?name={}", "a".repeat(64));
    assert!(parse(&long_name, &no_env).is_err());
    let long_host = format!("server://{}:1/t:2", "a.".repeat(127));
    assert!(parse(&long_host, &no_env).is_err());
}

/// `EDGEPASS_KEY` gives the key when the URL has none; a key in the URL wins, and an empty
/// variable counts as unset.
#[test]
fn the_key_may_come_from_the_environment() {
    let env = |v: &'static str| move |k: &str| (k == KEY_VAR).then(|| v.to_string());
    let p = |url: &str, v| parse(url, &env(v)).unwrap_or_else(|e| panic!("{url}: {e}"));
    let cfg = p("client://h:1/t:2", "from env");
    assert_eq!(cfg.key_bytes(), b"from env");
    assert!(!cfg.may_forward_locally(), "a keyed client dials a server");
    assert_eq!(p("client://url@h:1/t:2", "from env").key_bytes(), b"url");
    assert_eq!(p("client://h:1/t:2", "").key_bytes(), b"1");
}

/// Error lines end up in logs (a service manager may log one every few seconds): none quotes
/// the key or the visit key, and each still names the bad part.
#[test]
fn errors_never_quote_a_key() {
    for (url, named) in [
        ("server://Sup3rSecret@0.0.0.0:10101", "***@0.0.0.0:10101"),
        ("server://Sup3rSecret@/t:2", "***@/t:2"),
        ("server://Sup3rSecret%zz@h:1/t:2", "***@"),
        ("relay://Sup3rSecret@h:1/t:2", "***@h:1/t:2"),
        ("server:/Sup3rSecret@h:1/t:2", "***@h:1/t:2"),
        ("visit://Sup3rSecret@h:1?name=a", "***@h:1"),
        ("relay://k@h:1?visit-key=Sup3rSecret%zz", "visit-key=***"),
    ] {
        let e = parse(url, &no_env).unwrap_err().to_string();
        assert!(!e.contains("Sup3rSecret"), "{url}: {e}");
        assert!(e.contains(named), "{url}: {e}");
    }
}

#[test]
fn error_display_is_one_short_line() {
    let e = parse("server://h:1/t:2?frob\n=1", &no_env).unwrap_err();
    assert_eq!(e.to_string(), "unknown query key: `frob\\n`");
    let e = parse(&format!("x{}://", "y".repeat(500)), &no_env).unwrap_err();
    assert!(e.to_string().len() < 200, "{e}");
    let e = parse("server://h:99999/t:2", &no_env).unwrap_err();
    assert_eq!(e.to_string(), "port must be 0-65535: `h:99999`");
}

#[test]
fn never_panics() {
    let odd = [
        "://",
        "server://[",
        "server://]",
        "server://@",
        "server://:",
        "server://[]:1/:1",
        "server://h:1/t:2?=",
        "server://h:1/t:2?=1",
        "server://h:1/t:2?%",
        "visit://é:1/ü:2",
        "server://h:1/t:2?read=1\u{b5}",
        "server://h:1/t:2?log=%C3",
        "client://%@h:1/t:2",
        "server://[::1]:1/[::1]:2,[::2]",
    ];
    for url in odd {
        let _ = parse(url, &no_env);
    }
}

#[test]
fn environment_precedence() {
    let env = |k: &str| match k {
        "NP_REPORT_INTERVAL" => Some("7s".to_owned()),
        "REPORT_INTERVAL" => Some("9s".to_owned()),
        "SHUTDOWN_TIMEOUT" => Some("0".to_owned()),
        "UDP_DATA_BUF_SIZE" => Some("1500".to_owned()),
        "NP_SEMAPHORE_LIMIT" => Some(String::new()),
        "SEMAPHORE_LIMIT" => Some("100".to_owned()),
        "NP_MIN_POOL_CAPACITY" => Some("2".to_owned()),
        "MAX_POOL_CAPACITY" => Some("10".to_owned()),
        _ => None,
    };
    let cfg = parse("server://h:1/t:2", &env).unwrap();
    let t = &cfg.tuning;
    assert_eq!(t.report_interval, Duration::from_secs(7), "NP_ beats bare");
    assert_eq!(t.shutdown_timeout, Duration::ZERO);
    assert_eq!(t.udp_buf, 1500);
    assert_eq!(t.semaphore_limit, 100, "empty NP_ value counts as unset");
    assert_eq!(t.tcp_buf, Tuning::default().tcp_buf, "default when unset");
    assert_eq!((cfg.min, cfg.max), (2, 10), "environment beats default");
    let cfg = parse("server://h:1/t:2?min=3&max=5", &env).unwrap();
    assert_eq!((cfg.min, cfg.max), (3, 5), "URL beats environment");
    // The URL may fix a max below the environment's min only by also setting min.
    assert!(parse("server://h:1/t:2?max=1", &env).is_err());
}

#[test]
fn keepalive_default_value_and_off() {
    let keep = |v: Option<&str>| {
        let env = |k: &str| (k == "TCP_KEEPALIVE").then(|| v.unwrap_or("").to_owned());
        parse("server://h:1/t:2", &env).unwrap().tuning.keepalive
    };
    assert_eq!(keep(None), Some(Duration::from_secs(60)), "default");
    assert_eq!(keep(Some("15s")), Some(Duration::from_secs(15)));
    assert_eq!(keep(Some("0")), None, "0 turns it off");
}

#[test]
fn bad_environment() {
    let table: &[(&str, &str, &str)] = &[
        ("NP_REPORT_INTERVAL", "abc", "NP_REPORT_INTERVAL=abc"),
        ("HANDSHAKE_TIMEOUT", "5", "HANDSHAKE_TIMEOUT=5"),
        ("TCP_DIAL_TIMEOUT", "0", "TCP_DIAL_TIMEOUT=0"),
        ("SERVICE_COOLDOWN", "0s", "SERVICE_COOLDOWN=0s"),
        ("TCP_DATA_BUF_SIZE", "512", "TCP_DATA_BUF_SIZE=512"),
        ("TCP_DATA_BUF_SIZE", "2097152", "TCP_DATA_BUF_SIZE=2097152"),
        (
            "NP_UDP_DATA_BUF_SIZE",
            "65536",
            "NP_UDP_DATA_BUF_SIZE=65536",
        ),
        ("SEMAPHORE_LIMIT", "0", "SEMAPHORE_LIMIT=0"),
        ("SEMAPHORE_LIMIT", "-1", "SEMAPHORE_LIMIT=-1"),
        ("MIN_POOL_INTERVAL", "2s", "MIN_POOL_INTERVAL"),
        ("NP_MAX_POOL_CAPACITY", "0", "NP_MAX_POOL_CAPACITY=0"),
        ("MIN_POOL_CAPACITY", "x", "MIN_POOL_CAPACITY=x"),
        ("MIN_POOL_CAPACITY", "100", "min=100&max=64"),
        ("TCP_KEEPALIVE", "500ms", "TCP_KEEPALIVE=500ms"),
        ("NP_TCP_KEEPALIVE", "10h", "NP_TCP_KEEPALIVE=10h"),
        ("TCP_KEEPALIVE", "often", "TCP_KEEPALIVE=often"),
    ];
    for &(var, value, part) in table {
        let env = |k: &str| (k == var).then(|| value.to_owned());
        match parse("server://h:1/t:2", &env) {
            Ok(_) => panic!("{var}={value} accepted"),
            Err(e) => assert!(e.part.contains(part), "{var}={value}: part {:?}", e.part),
        }
    }
}

#[test]
fn names() {
    for good in ["a", "cam-7", "A.b_c-9", &"x".repeat(63)] {
        assert!(valid_name(good), "{good}");
    }
    for bad in ["", "a b", "a/b", "é", "a:b", &"x".repeat(64)] {
        assert!(!valid_name(bad), "{bad}");
    }
}
