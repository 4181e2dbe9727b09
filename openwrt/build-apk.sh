#!/usr/bin/env bash
# Build an OpenWrt .apk (apk-tools v3 ADB package; OpenWrt 25.x and snapshots) from a
# cross-built binary, without the OpenWrt SDK, with `apk mkpkg` as OpenWrt's
# include/package-pack.mk does.
#
#   openwrt/build-apk.sh [--arch OPENWRT_ARCH] [--out DIR] TARGET_TRIPLE BINARY [VERSION]
#
# Writes DIR/ARCH/edgepass-VERSION.apk (default DIR: dist/packages/apk) and prints its path.
# Needs apk-tools v3 (`apk mkpkg`). Debian bookworm has no apk-tools package and neither
# crates.io nor PyPI carries one, so where v3 is missing this exits with status 3 and a
# message, and CI skips the .apk; the format is never imitated by hand.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=openwrt/pkg-common.sh
. "$here/pkg-common.sh"

parse_pkg_args build-apk.sh "$repo_root/dist/packages/apk" "$@"

if ! command -v apk >/dev/null 2>&1 || ! apk --version 2>/dev/null | grep -q 'apk-tools 3'; then
    echo "build-apk.sh: SKIP: apk-tools v3 (apk mkpkg) is not installed; no .apk built" >&2
    exit 3
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/edgepass-apk.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
stage_root "$root" "$binary"

# The package database files OpenWrt puts in every apk: the file list and the conffiles
# (with their sha256, used to tell an edited config from the shipped one).
meta="$root/lib/apk/packages"
install -d -m 0755 "$meta"
(cd "$root" && find . -path ./lib/apk -prune -o \( -type f -o -type l \) -print | sed 's|^\.||' | LC_ALL=C sort) > "$meta/$PKG_NAME.list"
echo /etc/config/edgepass > "$meta/$PKG_NAME.conffiles"
echo "/etc/config/edgepass $(sha256sum "$root/etc/config/edgepass" | cut -d' ' -f1)" > "$meta/$PKG_NAME.conffiles_static"

# apk runs its scripts with no arguments: OpenWrt's defaults read root and pkgname instead.
for kind in postinst prerm; do
    cat > "$work/$kind" <<SCRIPT
#!/bin/sh
[ "\${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s "\${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "\${IPKG_INSTROOT}/lib/functions.sh"
export root="\${IPKG_INSTROOT}"
export pkgname="$PKG_NAME"
default_$kind
SCRIPT
    chmod 0755 "$work/$kind"
done

mkdir -p "$out/$arch"
pkg="$out/$arch/$PKG_NAME-$version.apk"
apk mkpkg \
    --info "name:$PKG_NAME" \
    --info "version:$version" \
    --info "description:$PKG_DESCRIPTION" \
    --info "arch:$arch" \
    --info "license:$PKG_LICENSE" \
    --info "origin:$PKG_NAME" \
    --info "depends:libc" \
    --script "post-install:$work/postinst" \
    --script "pre-deinstall:$work/prerm" \
    --files "$root" \
    --output "$pkg"
echo "$pkg"
