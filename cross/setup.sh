#!/usr/bin/env bash
# Install what cross/build.sh (zig backend), cross/smoke.sh and the packaging checks need on a
# Debian/Ubuntu machine that already has rustup and python3. Safe to run again: each step
# checks first and does nothing when its tool is already there.
#
#   apt:    qemu-user (runs the foreign binaries), skopeo (checks the OCI image layout)
#   pip:    ziglang + cargo-zigbuild (the linker; versions as tested in cross/README.md)
#   rustup: stable x86_64/aarch64 musl std; the nightly in cross/nightly.txt with rust-src
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
nightly=$(tr -d '[:space:]' < "$here/nightly.txt")
ZIGLANG_VERSION=0.17.1
CARGO_ZIGBUILD_VERSION=0.24.0

sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)

# --- apt ---------------------------------------------------------------------------------
apt_missing=()
command -v qemu-mipsel >/dev/null 2>&1 || apt_missing+=(qemu-user)
command -v skopeo >/dev/null 2>&1 || apt_missing+=(skopeo)
if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

# --- pip: zig and cargo-zigbuild -----------------------------------------------------------
# A python without pip rights (Debian's "externally managed" one) gets a private venv, which
# cross/build.sh puts on PATH.
venv="${XDG_CACHE_HOME:-$HOME/.cache}/edgepass-cross/venv"
have_zig_tools() {
    command -v cargo-zigbuild >/dev/null 2>&1 &&
        { command -v zig >/dev/null 2>&1 || python3 -c 'import ziglang' 2>/dev/null; }
}
[ -x "$venv/bin/cargo-zigbuild" ] && export PATH="$venv/bin:$PATH"
if ! have_zig_tools; then
    pkgs=("ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION")
    echo "setup: pip install ${pkgs[*]}"
    if ! python3 -m pip install -q --disable-pip-version-check "${pkgs[@]}" 2>/dev/null; then
        echo "setup: system pip refused; using a venv at $venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pkgs[@]}"
        export PATH="$venv/bin:$PATH"
    fi
    hash -r
    have_zig_tools || { echo "setup: cargo-zigbuild still not found on PATH" >&2; exit 1; }
fi

# --- rustup --------------------------------------------------------------------------------
# x86_64 and aarch64 musl std download from rustup; armv7/arm (not served by every mirror)
# and MIPS (tier 3) are built from source with -Zbuild-std, which needs rust-src.
rustup target add --toolchain stable x86_64-unknown-linux-musl aarch64-unknown-linux-musl
rustup toolchain install "$nightly" --profile minimal --component rust-src --no-self-update

echo "setup: ok ($(cargo-zigbuild --version 2>/dev/null | head -1); nightly $nightly)"
