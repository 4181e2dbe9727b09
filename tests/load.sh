#!/usr/bin/env bash
# The full-size load tests (10,000 connections held at once, 100,000 in a row) that CI runs
# only in small form. Each held connection costs about six descriptors across the test,
# the server and the client, so the open-files limit is raised first (needs root or a hard
# limit of at least 65536). Prints the FIGURE lines quoted in RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Under 65536 the held-connections test scales its count down to what fits and says so.
echo "open-files limit: $(ulimit -n)"
cargo test --test load -- --ignored --nocapture --test-threads=1 2>&1 | grep -E "FIGURE|^test |test result|panicked"
