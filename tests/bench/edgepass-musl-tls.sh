# desc: edgepass as a static musl binary (cargo build --release --target x86_64-unknown-linux-musl), tls=1
# The same runs as ../shared/bench/tunnels/edgepass-tls.sh with the static build.
EDGEPASS_BIN=${EDGEPASS_MUSL_BIN:-target/x86_64-unknown-linux-musl/release/edgepass}
# shellcheck source=/dev/null
source "${TUNNEL_BENCH_DIR:-../shared/bench}/tunnels/edgepass-tls.sh"
