#!/usr/bin/env bash
# Run the side-by-side tunnel benchmark (../shared/bench/tunnel-bench) against this project's
# release binary, beside the peers that are installed (rathole, bore, socat).
# Usage: tests/bench.sh [tunnel-bench options] [tunnels...]
#   tests/bench.sh                         # -r 3 direct rathole bore edgepass
#   tests/bench.sh -r 3 direct rathole-tls edgepass-tls
#   tests/bench.sh -r 5 -m conn direct tests/bench/floor.sh edgepass   # against the floor
#     (two minimal relay processes: the best rate a user-space tunnel can get on this machine;
#     tests/bench/floor-kernel.sh is the same with the bytes left to the kernel, as root)
# Needs: iperf3 and socat (apt-get install iperf3 socat), rathole (cargo install rathole),
# bore (cargo install bore-cli --locked). See BENCHMARKS.md for the figures of the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS=${TUNNEL_BENCH:-../shared/bench/tunnel-bench}
[ -x "$HARNESS" ] || { echo "tunnel-bench not found at $HARNESS (set TUNNEL_BENCH)"; exit 2; }
cargo build --release --locked --quiet
export EDGEPASS_BIN=$PWD/target/release/edgepass
export PATH=$HOME/.cargo/bin:$PATH
if [ $# -eq 0 ]; then
  set -- -r 3 direct rathole bore edgepass
fi
exec "$HARNESS" "$@"
