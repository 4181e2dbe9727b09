# desc: the floor: two minimal C relay processes in a row (tests/bench/floor/relay.c), no protocol
# The shape of a tunnel's server and client (PUBLIC -> TUNNEL -> TARGET, one epoll loop each,
# a connection dialed per user) with nothing else: what this machine allows a tunnel that moves
# bytes through two user-space processes. Built with gcc into FLOOR_DIR (default: a directory under /tmp).
TB_CAPS="tcp"
FLOOR_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/floor/relay.c"
FLOOR_DIR=${FLOOR_DIR:-${TMPDIR:-/tmp}/edgepass-bench-floor}
FLOOR_CFLAGS=${FLOOR_CFLAGS:-}  # -DSOCKMAP from floor-kernel.sh
FLOOR_BIN="$FLOOR_DIR/relay${FLOOR_CFLAGS:+-kernel}"
tb_available() {
  command -v gcc >/dev/null || { echo "gcc not found"; return 1; }
  [ -z "$FLOOR_CFLAGS" ] || [ "$(id -u)" = 0 ] || { echo "BPF needs root"; return 1; }
  [ "$FLOOR_BIN" -nt "$FLOOR_SRC" ] && return 0  # built already, from this source
  mkdir -p "$FLOOR_DIR" && gcc -O2 $FLOOR_CFLAGS -o "$FLOOR_BIN" "$FLOOR_SRC" ||
    { echo "relay.c did not build"; return 1; }
}
tb_version() { echo "floor relay (gcc -O2 $FLOOR_CFLAGS)"; }
tb_binaries() { echo "$FLOOR_BIN"; }
tb_start() { # PROTO TARGET PUBLIC TUNNEL
  local tgt=$2 pub=$3 tun=$4
  tb_spawn client "$FLOOR_BIN" "$tun" "$tgt"
  tb_wait_listen "$tun" 10 || return 1
  tb_spawn server "$FLOOR_BIN" "$pub" "$tun"
}
