#!/usr/bin/env bash
# Run every fuzz target briefly (FUZZ_SECONDS each, default 20) so they keep building and
# running; longer runs are in fuzz/README.md. Needs the nightly toolchain and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-20}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
cargo +nightly fuzz build   # a build failure fails CI here, before the filtered runs
for t in $(cargo +nightly fuzz list); do
  extra=()
  [ -f "$t.dict" ] && extra=(-dict="$t.dict")
  echo "--- fuzz $t for ${secs}s"
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" "${extra[@]}" 2>&1 | grep -E "^(#[0-9]+ +DONE|Done|==[0-9]+==|SUMMARY)|panicked" || true
  # libFuzzer exits non-zero on a crash; re-check via the artifacts directory.
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then echo "fuzz $t found a crash"; exit 1; fi
done
