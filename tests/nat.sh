#!/usr/bin/env bash
# The NAT tests (tests/nat.rs): network namespaces, veth pairs, an iptables MASQUERADE router,
# conntrack flush, 2% loss; then a link with 50 ms round trip and 2% loss each way emulated in
# user space over TUN devices (no netem needed). Needs root, iproute2, iptables, /dev/net/tun,
# and conntrack (Debian package `conntrack`) for the rebinding part; skips with a message where
# namespaces are not allowed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v conntrack >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq conntrack >/dev/null 2>&1 || true; }
cargo test --test nat -- --ignored --exact nat_traversal_rebinding_and_loss nat_delayed_lossy_link nat_vanished_user_closed_by_keepalive --nocapture 2>&1 | grep -E "FIGURE|SKIPPED|^test |test result|panicked"
