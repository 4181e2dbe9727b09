#!/usr/bin/env bash
# Regenerate cross/hot-symbols.txt, the order in which the linker lays out the code of the
# static x86_64 build (.cargo/config.toml passes it to rust-lld as --symbol-ordering-file).
#
# An idle tunnel runs a few hundred functions, but spread over a 2 MB text they touch most of
# its 64 KiB fault-around windows, and all of those pages count as resident. Laid out
# together, they touch a handful. The list is made by running the stripped release build,
# a server and a client: idle with a session up (after one connection, as the benchmarks
# measure it), then connections through them with tls=0, a burst of 500 held at once,
# connections with tls=1 and a burst with tls=1. The entry point goes first. Each
# run is made twice: natively under gdb (cross/native_trace.py: the functions this CPU's
# feature checks pick, such as ring's ADX and VAES assembly) and under callgrind (the
# functions a CPU without those features runs); every function seen is looked up in the
# linker map. All of it is done for the `cargo build` of the benchmarks and, when
# cargo-zigbuild is installed, for the one of cross/build.sh, and the two lists merged.
#
# Needs valgrind, gdb and python3. Run it after changes that move much code, or when CI's idle
# budget fails (cross/idle_rss.py); symbols that no longer exist are skipped by the linker, new
# ones land in the default order. Tracing is not deterministic: compare cross/idle_rss.py on
# the builds before and after, and keep the better list.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 4096 2>/dev/null || true  # the burst holds 1,000 sockets in each process
T=x86_64-unknown-linux-musl
work=${KEEP:-$(mktemp -d)}
mkdir -p "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

bin=target/$T/release/edgepass

# An echo target.
python3 -c '
import socket, threading, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
print(s.getsockname()[1], flush=True)
def echo(c):
    while (d := c.recv(65536)):
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
' > "$work/echo.port" &
for _ in $(seq 50); do [ -s "$work/echo.port" ] && break; sleep 0.1; done
echo_port=$(cat "$work/echo.port")

wait_for() { # FILE TEXT
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; return 1
}

# How a run starts a process: `under cg NAME` (callgrind) or `under gdb NAME` (native).
under() { # HOW OUT CMD...
  local how=$1 out=$2; shift 2
  if [ "$how" = cg ]; then
    exec valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$@"
  else
    exec env HOT_MAP="$map" HOT_OUT="$out.names" \
      gdb -q -batch -x cross/native_trace.py --args "$@"
  fi
}

# The process a run signals: the binary itself, under gdb its child.
target_pid() { # PID HOW
  if [ "$2" = gdb ]; then
    for _ in $(seq 100); do pgrep -P "$1" && return 0; sleep 0.1; done
    return 1
  fi
  echo "$1"
}

# One run: server and client under HOW, users as given by USERS, then SIGINT.
run() { # HOW NAME TLS USERS
  local how=$1 name=$2 tls=$3 users=$4
  name=$name-$how
  under "$how" "$work/$name-s" \
    "$bin" "server://k@127.0.0.1:0/127.0.0.1:0?log=info&tls=$tls" > "$work/$name-s.log" 2>&1 &
  local vs=$!
  wait_for "$work/$name-s.log" "tunnel on"
  local tun pub
  tun=$(grep -o "tunnel on 127.0.0.1:[0-9]*" "$work/$name-s.log" | cut -d: -f2)
  pub=$(grep -o "users on 127.0.0.1:[0-9]*" "$work/$name-s.log" | cut -d: -f2)
  under "$how" "$work/$name-c" \
    "$bin" "client://k@127.0.0.1:$tun/127.0.0.1:$echo_port?log=info" > "$work/$name-c.log" 2>&1 &
  local vc=$!
  wait_for "$work/$name-c.log" "session up"
  if [ "$users" = idle ]; then
    # One connection first, as the benchmark harness and cross/idle_rss.py make before they
    # measure idle (and as any tunnel in use has had): its code counts as idle code. Then
    # two stats ticks, heartbeats, pool ticks, and the ticks going quiet.
    python3 cross/smoke_util.py roundtrip "$pub" 20 32 > /dev/null
    sleep 12
  elif [ "$users" = burst ]; then
    # First the ticks go quiet (cross/README.md), as they have before any burst in real use:
    # the burst then runs the code that wakes them, and it is laid out as burst code.
    sleep 8
    # 500 held, opened 50 at once as the benchmark harness does (the pool runs dry, users
    # wait on timers, the pool doubles and refills), all closed, then the pool's ticks shrink
    # it back: the code of a burst, laid out beside the rest.
    python3 -c '
import socket, sys, threading, time
port, held, lock = int(sys.argv[1]), [], threading.Lock()
def one():
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"x" * 32); got = b""
        while len(got) < 32 and (d := s.recv(64)):
            got += d
        with lock:
            held.append(s)
    except OSError:
        pass
for _ in range(10):
    ts = [threading.Thread(target=one) for _ in range(50)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
for s in held:
    s.close()
time.sleep(4)
' "$pub"
  else
    python3 -c '
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=20); break
        except OSError:
            time.sleep(0.1)
    msg = bytes(range(256)) * 400
    s.sendall(msg); got = b""
    while len(got) < len(msg):
        got += s.recv(65536)
    assert got == msg
    s.close()
' "$pub" "$users"
  fi
  kill -INT "$(target_pid "$vs" "$how")" "$(target_pid "$vc" "$how")"
  wait "$vs" "$vc" || true
}

# Plaintext first, then TLS; within each, the server's runs, then the client's (code the
# client shares with the server is placed already): all the plaintext code one role runs, idle
# or in a burst, lies together, and TLS code does not split it. Per scenario, what this CPU
# runs first, then what a CPU without its features would run.
trace() { # OUT: every scenario on $bin, the list of what ran to OUT
  local out=$1
  for scenario in "idle 0 idle" "tcp 0 40" "burst 0 burst" "tls 1 40" "tlsburst 1 burst"; do
    set -- $scenario
    run gdb "$@"
    run cg "$@"
  done
  # A block per role and group: the code of its bursts goes in the middle of the code of its
  # first scenario (idle, or the first tls=1 connections with the pool's handshakes), where it
  # can share no 64 KiB window that scenario leaves untouched (hot_order.py).
  local profiles=() kind
  for group in "idle tcp burst" "tls tlsburst"; do
    for role in s c; do
      profiles+=(--block)
      for name in $group; do
        case $name in
          idle|tls) kind=idle: ;;
          *burst) kind=burst: ;;
          *) kind= ;;
        esac
        profiles+=("$kind$work/$name-gdb-$role.names" "$kind$work/$name-cg-$role.cg")
      done
    done
  done
  python3 cross/hot_order.py "$map" "$out" "${profiles[@]}"
}

# The usual build (the flags of .cargo/config.toml for $T), and for the binary alone a linker
# map with mangled names. Extra flags for the binary do not change symbol names, so the map
# names the symbols of the usual build.
map=$work/map.txt
touch src/main.rs
cargo rustc --release --locked --target $T --bin edgepass -- \
  -C link-arg=-Map="$map" -C link-arg=--no-demangle
trace "$work/gcc.txt"

# cross/build.sh builds the shipped binary with cargo-zigbuild, where zig's clang compiles
# ring's C code and inlines it differently: the functions only that build has go beside the
# ones they run with. (`--config` adds to the flags of .cargo/config.toml.)
if command -v cargo-zigbuild >/dev/null 2>&1; then
  map=$work/map-zig.txt
  touch src/main.rs
  cargo +stable zigbuild --release --locked --target $T --bin edgepass --config \
    "target.$T.rustflags=[\"-C\", \"link-arg=-Map=$map\", \"-C\", \"link-arg=--no-demangle\"]"
  trace "$work/zig.txt"
  python3 cross/hot_order.py --merge "$work/gcc.txt" "$work/zig.txt" cross/hot-symbols.txt
else
  echo "hot-order: cargo-zigbuild not found (cross/setup.sh): the list covers the cargo build only" >&2
  cp "$work/gcc.txt" cross/hot-symbols.txt
fi
# Cargo does not track the list (a linker argument): make the next build link again.
touch src/main.rs
