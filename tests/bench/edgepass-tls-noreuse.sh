# desc: edgepass tls=1 with POOL_REUSE=0 (a new pool connection, so a TLS handshake, per user): the reuse A/B
# The same runs as ../shared/bench/tunnels/edgepass-tls.sh with reuse off.
export POOL_REUSE=0
EDGEPASS_TLS=1
# shellcheck source=/dev/null
source "${TUNNEL_BENCH_DIR:-../shared/bench}/tunnels/edgepass.sh"
