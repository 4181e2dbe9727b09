#!/usr/bin/env bash
# Build edgepass, then run a real tunnel on this machine and show bytes crossing it:
#   target (a tiny echo service) <- client <-> server <- user
# Usage: tests/demo.sh            (needs cargo and python3; uses free loopback ports only)
# The binary is taken from $CARGO_TARGET_DIR when that is set, as cargo builds it there.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/edgepass
if [ ! -x "$BIN" ]; then
  echo "demo.sh: the build left no binary at $BIN; set CARGO_TARGET_DIR to cargo's target directory" >&2
  exit 1
fi
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # PORT: wait (at most 10 s) until something listens there
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}

TARGET=$(free_port); TUNNEL=$(free_port); PUBLIC=$(free_port)

# The service behind the NAT: answers every line with "target got: <line>".
python3 - "$TARGET" >"$WORK/target.log" 2>&1 <<'PY' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
def serve(c):
    with c, c.makefile("rb") as r:
        for line in r:
            c.sendall(b"target got: " + line)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
pids+=($!)
wait_port "$TARGET"

echo "== server: $BIN 'server://demo-key@127.0.0.1:$TUNNEL/127.0.0.1:$PUBLIC'"
"$BIN" "server://demo-key@127.0.0.1:$TUNNEL/127.0.0.1:$PUBLIC" 2>"$WORK/server.log" &
pids+=($!)
wait_port "$TUNNEL"
echo "== client: $BIN 'client://demo-key@127.0.0.1:$TUNNEL/127.0.0.1:$TARGET'"
"$BIN" "client://demo-key@127.0.0.1:$TUNNEL/127.0.0.1:$TARGET" 2>"$WORK/client.log" &
pids+=($!)
wait_port "$PUBLIC"

echo "== a user connects to 127.0.0.1:$PUBLIC and sends three lines through the tunnel:"
python3 - "$PUBLIC" <<'PY'
import socket, sys, time
deadline = time.time() + 10
while True:  # the client's pool may still be warming up
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2)
        s.settimeout(5)
        s.sendall(b"hello from the user\n"); first = s.recv(4096)
        if first: break
    except OSError:
        pass
    if time.time() > deadline: sys.exit("no answer through the tunnel")
    time.sleep(0.2)
print("   sent: hello from the user\n   back:", first.decode().strip())
for line in (b"bytes cross the tunnel unchanged\n", b"\xe2\x9c\x93 utf-8 too\n"):
    s.sendall(line)
    got = b""
    while not got.endswith(b"\n"):
        got += s.recv(4096)
    print("   sent:", line.decode().strip(), "\n   back:", got.decode().strip())
s.close()
PY
sleep 0.2
echo "== server log:"; sed 's/^/   /' "$WORK/server.log"
echo "== client log:"; sed 's/^/   /' "$WORK/client.log"
echo "== the tunnel works."
