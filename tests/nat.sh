#!/usr/bin/env bash
# The NAT test (tests/nat.rs): network namespaces, veth pairs, an iptables MASQUERADE router,
# conntrack flush, 2% loss. Needs root, iproute2, iptables, and conntrack (Debian package
# `conntrack`) for the rebinding part; skips with a message where namespaces are not allowed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v conntrack >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq conntrack >/dev/null 2>&1 || true; }
cargo test --test nat -- --ignored --exact nat_traversal_rebinding_and_loss --nocapture 2>&1 | grep -E "FIGURE|SKIPPED|^test |test result|panicked"
