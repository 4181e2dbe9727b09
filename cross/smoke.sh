#!/usr/bin/env bash
# Smoke-test cross-built edgepass binaries under qemu-user.
#
#   cross/smoke.sh [options] [TARGET... | all]     (default: every dist/<target>/edgepass)
#
# For each target binary: `--version` must run, then the binary (under qemu-<arch>; x86_64
# natively) is the CLIENT of a tunnel whose SERVER is the host x86_64 binary, in front of a
# small python echo target, all on 127.0.0.1:
#
#   python roundtrip -> server public port -> [tunnel] -> client (target arch) -> echo target
#
# and the bytes that come back must equal the bytes sent. Ports come from the OS, readiness
# is polled with deadlines, and every process started here is killed on exit.
#
# Options:
#   --dist DIR        where the binaries are (default: dist)
#   --server BIN      host server binary (default: DIST/x86_64-unknown-linux-musl/edgepass)
#   --tls "0 1"       tls modes to try (default: "0 1"; use "0" for builds without tls)
#   --udp             also check a UDP datagram round trip (builds with the udp feature)
#   --bytes N         TCP payload size (default: 262144)
#   --timeout S       per-step deadline in seconds (default: 60; qemu is slow on 2 cores)
#   --version-only    only run `--version` (for a binary that has no tunnel yet)
# Exit status: 0 when every target passed, 1 otherwise.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
util="$here/smoke_util.py"

dist="$root/dist"
server_bin=
tls_modes="0 1"
udp=0
nbytes=262144
step_timeout=60
version_only=0
targets=()

usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dist) dist=$(cd "$2" && pwd); shift 2 ;;
        --server) server_bin=$2; shift 2 ;;
        --tls) tls_modes=$2; shift 2 ;;
        --udp) udp=1; shift ;;
        --bytes) nbytes=$2; shift 2 ;;
        --timeout) step_timeout=$2; shift 2 ;;
        --version-only) version_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        all) targets+=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl
                       armv7-unknown-linux-musleabihf arm-unknown-linux-musleabi
                       mipsel-unknown-linux-musl mips-unknown-linux-musl); shift ;;
        -*) echo "smoke.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    for d in "$dist"/*/; do
        [ -x "$d/edgepass" ] && targets+=("$(basename "$d")")
    done
fi
[ ${#targets[@]} -gt 0 ] || { echo "smoke.sh: no binaries under $dist (run cross/build.sh first)" >&2; exit 1; }
server_bin=${server_bin:-$dist/x86_64-unknown-linux-musl/edgepass}

work=$(mktemp -d "${TMPDIR:-/tmp}/edgepass-smoke.XXXXXX")
pids=()

# Stop one process: TERM, a bounded wait, then KILL.
stop() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
cleanup() {
    local pid
    for pid in ${pids[@]+"${pids[@]}"}; do stop "$pid"; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

runner_for() {
    case "$1" in
        x86_64-*) echo "" ;;
        aarch64-*) echo qemu-aarch64 ;;
        armv7-*|arm-*) echo qemu-arm ;;
        mipsel-*) echo qemu-mipsel ;;
        mips-*) echo qemu-mips ;;
        *) echo "smoke.sh: no qemu known for $1" >&2; return 1 ;;
    esac
}

show_logs() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "---- $(basename "$f") (last 30 lines)" >&2
        tail -n 30 "$f" >&2
    done
}

# Start the echo target once; every tunnel forwards to it.
python3 "$util" echo-server "$work/echo.port" &
pids+=($!)
python3 "$util" wait-file "$work/echo.port" "$step_timeout" || exit 1
echo_port=$(cat "$work/echo.port")

if [ "$version_only" = 0 ]; then
    [ -x "$server_bin" ] || { echo "smoke.sh: host server binary $server_bin missing (build x86_64-unknown-linux-musl)" >&2; exit 1; }
fi

# One tunnel: host server + target client, then the echo round trip(s).
tunnel_check() {
    local target=$1 bin=$2 runner=$3 tls=$4
    local tag="$target.tls$tls"
    local key tport pport spid cpid rc=0
    key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    tport=$(python3 "$util" freeport)
    pport=$(python3 "$util" freeport)
    "$server_bin" "server://$key@127.0.0.1:$tport/127.0.0.1:$pport?tls=$tls&log=debug" \
        >"$work/$tag.server.log" 2>&1 &
    spid=$!; pids+=("$spid")
    if ! python3 "$util" wait-listen "$tport" "$step_timeout" "$spid"; then
        show_logs "$work/$tag.server.log"; stop "$spid"; return 1
    fi
    $runner "$bin" "client://$key@127.0.0.1:$tport/127.0.0.1:$echo_port?log=debug" \
        >"$work/$tag.client.log" 2>&1 &
    cpid=$!; pids+=("$cpid")
    python3 "$util" roundtrip "$pport" "$step_timeout" "$nbytes" || rc=1
    if [ "$rc" = 0 ] && [ "$udp" = 1 ]; then
        python3 "$util" udp-roundtrip "$pport" "$step_timeout" || rc=1
    fi
    if [ "$rc" != 0 ]; then
        show_logs "$work/$tag.server.log" "$work/$tag.client.log"
    fi
    stop "$cpid"; stop "$spid"
    return $rc
}

failed=()
passed=()
for target in "${targets[@]}"; do
    bin="$dist/$target/edgepass"
    echo "==> $target"
    if [ ! -x "$bin" ]; then
        echo "    missing $bin" >&2; failed+=("$target"); continue
    fi
    runner=$(runner_for "$target") || { failed+=("$target"); continue; }
    if [ -n "$runner" ] && ! command -v "$runner" >/dev/null; then
        echo "    $runner not installed (apt-get install qemu-user)" >&2; failed+=("$target"); continue
    fi
    if ! out=$(timeout "$step_timeout" $runner "$bin" --version 2>&1) || [[ "$out" != edgepass* ]]; then
        echo "    --version failed: $out" >&2; failed+=("$target"); continue
    fi
    echo "    --version: $out"
    [ "$version_only" = 1 ] && { passed+=("$target"); continue; }
    ok=1
    for tls in $tls_modes; do
        echo "    tls=$tls: ${runner:-native} client -> x86_64 server"
        # Not in a pipeline: the pids it starts must reach this shell's cleanup trap.
        if ! tunnel_check "$target" "$bin" "$runner" "$tls"; then
            ok=0
        fi
    done
    if [ "$ok" = 1 ]; then passed+=("$target"); else failed+=("$target"); fi
done

echo "smoke: passed: ${passed[*]:-none}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
