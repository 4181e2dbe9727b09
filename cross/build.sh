#!/usr/bin/env bash
# Build static musl edgepass binaries for routers and copy them to dist/<target>/edgepass.
#
#   cross/build.sh [options] TARGET... | all
#
# Options:
#   --profile NAME          cargo profile for every target (default: router for armv7, arm,
#                           mipsel and mips, release for x86_64 and aarch64); see Cargo.toml
#   --features LIST         cargo features (comma separated)
#   --no-default-features   drop the default features (tls, udp, relay)
#   --dist DIR              where to copy the binaries (default: dist)
#   --backend cross|zig     force a backend (default: cross when `docker info` works, else zig)
#
# Backends:
#   cross  cross-rs in Docker, configured by Cross.toml at the repository root.
#   zig    cargo-zigbuild with the ziglang linker from PyPI (no Docker). x86_64 and aarch64
#          use stable with rustup's std; armv7, arm, mipsel and mips use the nightly named in
#          cross/nightly.txt with -Zbuild-std=std,panic_abort (their std does not download).
# Size flags: with the router or minimal profile, the -Zbuild-std targets also get std's
# optimize_for_size feature, immediate-abort panics and no panic locations (size_flags below).
# Per-target rustc flags live in .cargo/config.toml; do not set RUSTFLAGS, it replaces them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

ALL_TARGETS=(
    x86_64-unknown-linux-musl
    aarch64-unknown-linux-musl
    armv7-unknown-linux-musleabihf
    arm-unknown-linux-musleabi
    mipsel-unknown-linux-musl
    mips-unknown-linux-musl
)

profile=
dist=dist
backend=
cargo_feature_args=()
targets=()

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=$2; shift 2 ;;
        --features) cargo_feature_args+=(--features "$2"); shift 2 ;;
        --no-default-features) cargo_feature_args+=(--no-default-features); shift ;;
        --dist) dist=$2; shift 2 ;;
        --backend) backend=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        all) targets+=("${ALL_TARGETS[@]}"); shift ;;
        -*) echo "build.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || { usage >&2; exit 2; }

nightly=$(tr -d '[:space:]' < "$here/nightly.txt")

if [ -z "$backend" ]; then
    if command -v cross >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        backend=cross
    else
        backend=zig
    fi
fi

# Targets whose std rustup does not serve here (armv7/arm: 404 on this mirror; MIPS: tier 3).
needs_build_std() {
    case "$1" in
        x86_64-unknown-linux-musl|aarch64-unknown-linux-musl) return 1 ;;
        *) return 0 ;;
    esac
}

# Size over speed for the routers: the -Zbuild-std targets in a size profile (router, minimal)
# get std built with `optimize_for_size`, panics that abort at once without formatting a
# message (`-C panic=immediate-abort`) and no file/line/column strings for panic locations.
# These rustflags are added to (not in place of) the ones in .cargo/config.toml.
size_flags() {
    local target=$1 prof=$2
    needs_build_std "$target" || return 0
    case "$prof" in router|minimal) ;; *) return 0 ;; esac
    printf '%s\n' -Zbuild-std-features=optimize_for_size --config \
        "target.$target.rustflags=[\"-Zunstable-options\", \"-Cpanic=immediate-abort\", \"-Zlocation-detail=none\"]"
}

build_one() {
    local target=$1
    local prof=$profile
    if [ -z "$prof" ]; then
        if needs_build_std "$target"; then prof=router; else prof=release; fi
    fi
    # cargo names the output directory after the profile, except that "dev" writes to "debug".
    local prof_dir=$prof
    [ "$prof" = dev ] && prof_dir=debug
    local cmd
    case "$backend" in
        zig)
            if needs_build_std "$target"; then
                cmd=(cargo "+$nightly" zigbuild -Zbuild-std=std,panic_abort)
            else
                cmd=(cargo +stable zigbuild)
            fi
            ;;
        cross)
            # Cross.toml turns on build-std for these; it needs nightly.
            if needs_build_std "$target"; then
                cmd=(cross "+$nightly" build)
            else
                cmd=(cross build)
            fi
            ;;
        *) echo "build.sh: unknown backend $backend" >&2; exit 2 ;;
    esac
    local flags
    mapfile -t flags < <(size_flags "$target" "$prof")
    cmd+=(${flags[@]+"${flags[@]}"})
    cmd+=(--locked --profile "$prof" --target "$target" --bin edgepass)
    cmd+=(${cargo_feature_args[@]+"${cargo_feature_args[@]}"})
    echo "==> [$backend] ${cmd[*]}" >&2
    local start=$SECONDS
    "${cmd[@]}"
    local out="${CARGO_TARGET_DIR:-target}/$target/$prof_dir/edgepass"
    [ -f "$out" ] || { echo "build.sh: $out was not produced" >&2; exit 1; }
    mkdir -p "$dist/$target"
    cp "$out" "$dist/$target/edgepass"
    echo "==> $dist/$target/edgepass: $(wc -c < "$dist/$target/edgepass") bytes, $((SECONDS - start)) s" >&2
}

for t in "${targets[@]}"; do
    case " ${ALL_TARGETS[*]} " in
        *" $t "*) ;;
        *) echo "build.sh: unsupported target $t (supported: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
    esac
    build_one "$t"
done
