# Shared by build-ipk.sh, build-apk.sh and check-package.sh (sourced, not run).
# shellcheck shell=bash

PKG_NAME=edgepass
PKG_SECTION=net
PKG_LICENSE="MIT Apache-2.0"
PKG_DESCRIPTION="Tiny, fast and secure TCP/UDP tunnel and relay for routers and IoT devices."

openwrt_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$openwrt_dir/.." && pwd)

# OpenWrt package architecture (ARCH_PACKAGES) for a Rust target triple.
# A static binary has no shared libraries whose ABI must match, so one build serves every
# OpenWrt arch that can execute its instructions; these are the common ones.
openwrt_arch() {
    case "$1" in
        x86_64-unknown-linux-musl) echo x86_64 ;;
        aarch64-unknown-linux-musl) echo aarch64_cortex-a53 ;;     # also runs on aarch64_generic
        armv7-unknown-linux-musleabihf) echo arm_cortex-a7_neon-vfpv4 ;;
        arm-unknown-linux-musleabi) echo arm_arm1176jzf-s_vfp ;;   # ARMv6 soft-float code; also arm_mpcore
        mipsel-unknown-linux-musl) echo mipsel_24kc ;;
        mips-unknown-linux-musl) echo mips_24kc ;;
        *) return 1 ;;
    esac
}

# The reverse, for the checks: which Rust triple (and so which qemu) an OpenWrt arch means.
triple_for_arch() {
    case "$1" in
        x86_64) echo x86_64-unknown-linux-musl ;;
        aarch64_*) echo aarch64-unknown-linux-musl ;;
        arm_cortex-a*) echo armv7-unknown-linux-musleabihf ;;
        arm_*) echo arm-unknown-linux-musleabi ;;
        mipsel_*) echo mipsel-unknown-linux-musl ;;
        mips_*) echo mips-unknown-linux-musl ;;
        *) return 1 ;;
    esac
}

# PKG_VERSION-rPKG_RELEASE, as OpenWrt writes it: version from Cargo.toml, release from
# openwrt/Makefile.
default_version() {
    local v r
    v=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo_root/Cargo.toml" | head -n 1)
    r=$(sed -n 's/^PKG_RELEASE:=//p' "$openwrt_dir/Makefile" | head -n 1)
    echo "$v-r${r:-1}"
}

# Lays out the installed files under $1 with OpenWrt's modes; $2 is the binary.
# The config holds the tunnel keys, so it is 0600, as INSTALL_CONF in OpenWrt's rules.mk
# (and so the feed Makefile) installs it.
stage_root() {
    local root=$1 binary=$2
    install -d -m 0755 "$root/usr/bin" "$root/etc/init.d" "$root/etc/config"
    install -m 0755 "$binary" "$root/usr/bin/edgepass"
    install -m 0755 "$openwrt_dir/files/edgepass.init" "$root/etc/init.d/edgepass"
    install -m 0600 "$openwrt_dir/files/edgepass.config" "$root/etc/config/edgepass"
}

# Package scripts in the shape OpenWrt's include/package-pack.mk generates: do nothing in an
# offline root without base-files, else hand over to default_postinst / default_prerm
# (which enable+start, or stop+disable, every /etc/init.d script the package installs).
write_postinst() {
    cat > "$1" <<'SCRIPT'
#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_postinst "$0" "$@"
SCRIPT
    chmod 0755 "$1"
}
write_prerm() {
    cat > "$1" <<'SCRIPT'
#!/bin/sh
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_prerm "$0" "$@"
SCRIPT
    chmod 0755 "$1"
}

# The command line of build-ipk.sh and build-apk.sh, `[--arch A] [--out DIR] TARGET_TRIPLE
# BINARY [VERSION]`, into $arch, $out, $triple, $binary and $version. $1 names the script in
# messages, $2 is the default output directory.
parse_pkg_args() {
    local name=$1
    out=$2
    shift 2
    arch=
    while [ $# -gt 0 ]; do
        case "$1" in
            --arch) arch=$2; shift 2 ;;
            --out) out=$2; shift 2 ;;
            -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
            *) break ;;
        esac
    done
    [ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: $0 [--arch A] [--out DIR] TARGET_TRIPLE BINARY [VERSION]" >&2; exit 2; }
    triple=$1 binary=$2 version=${3:-$(default_version)}
    [ -f "$binary" ] || { echo "$name: no binary at $binary" >&2; exit 1; }
    [ -n "$arch" ] || arch=$(openwrt_arch "$triple") || { echo "$name: no OpenWrt arch known for $triple (use --arch)" >&2; exit 2; }
}
