//! Every edgepass URL in `config-examples/` parses with the real parser.
//!
//! The scan is deliberately simple: a URL is a token that starts with `server://`,
//! `client://`, `relay://` or `visit://` (not in the middle of a word) and runs to the next
//! whitespace, quote or backtick. That matches how the examples write them: in shell quotes,
//! UCI quotes, YAML strings, systemd quotes and Markdown code.

use std::fs;
use std::path::{Path, PathBuf};

/// The schemes of the four roles.
const SCHEMES: [&str; 4] = ["server://", "client://", "relay://", "visit://"];

/// Every URL token in `text`, in order.
fn urls_in(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let Some(pos) = SCHEMES.iter().filter_map(|s| rest.find(s)).min() else {
            break;
        };
        let start = at + pos;
        let preceded_by_word = text[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &text[start..];
        let len = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            out.push(&tail[..len]);
        }
        at = start + len.max(1);
    }
    out
}

/// All regular files under `dir`, recursively, sorted for stable messages.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn scanner_finds_urls_as_the_examples_write_them() {
    let cases: &[(&str, &[&str])] = &[
        (
            "edgepass 'server://k@0.0.0.0:1/127.0.0.1:2?tls=1&log=info'",
            &["server://k@0.0.0.0:1/127.0.0.1:2?tls=1&log=info"],
        ),
        (
            "option url 'client://k@h:1/127.0.0.1:22'",
            &["client://k@h:1/127.0.0.1:22"],
        ),
        (
            "command: [\"relay://k@0.0.0.0:4001?tls=1\"]",
            &["relay://k@0.0.0.0:4001?tls=1"],
        ),
        (
            "run `visit://k@r:4001/127.0.0.1:2222?name=a` now",
            &["visit://k@r:4001/127.0.0.1:2222?name=a"],
        ),
        (
            "EDGEPASS_URL=client://k@h:1/t:2\nnext",
            &["client://k@h:1/t:2"],
        ),
        (
            "a server://x:1/y:2 b client://x:1/y:2",
            &["server://x:1/y:2", "client://x:1/y:2"],
        ),
        ("myserver://x:1 and rtsp://cam/stream and http://x", &[]),
        ("no urls here", &[]),
    ];
    for (text, want) in cases {
        assert_eq!(urls_in(text), *want, "scanning {text:?}");
    }
}

#[test]
fn every_url_in_config_examples_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config-examples");
    let files = files_under(&dir);
    assert!(!files.is_empty(), "no files under {}", dir.display());

    let mut all = Vec::new();
    let mut failures = Vec::new();
    for file in &files {
        let text =
            fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let urls = urls_in(&text);
        if urls.is_empty() {
            failures.push(format!(
                "{}: no edgepass URL in this example",
                file.display()
            ));
        }
        for url in urls {
            if let Err(e) = edgepass::config::parse(url, &|_| None) {
                failures.push(format!("{}: {url}\n    {e}", file.display()));
            }
            all.push(url.to_owned());
        }
    }
    assert!(
        !all.is_empty(),
        "no edgepass URL found under {}",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{} URLs in {} files parsed", all.len(), files.len());
}
