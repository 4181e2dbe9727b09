#!/usr/bin/env bash
# Build an OpenWrt .ipk (opkg; OpenWrt 24.10 and earlier) from a cross-built binary,
# without the OpenWrt SDK, in the layout OpenWrt's scripts/ipkg-build produces.
#
#   openwrt/build-ipk.sh [--arch OPENWRT_ARCH] [--out DIR] TARGET_TRIPLE BINARY [VERSION]
#
# VERSION defaults to Cargo.toml's version and openwrt/Makefile's PKG_RELEASE (0.1.0-r1);
# --arch overrides the OpenWrt architecture picked for the triple (see openwrt/README.md);
# the package is written to DIR (default dist/packages) and its path printed.
#
# Layout: a gzip'd GNU tar of ./debian-binary ("2.0"), ./data.tar.gz (the installed files)
# and ./control.tar.gz (control, conffiles, postinst, prerm), in that order; every tar is
# --sort=name, owner 0:0, one mtime (SOURCE_DATE_EPOCH, else the last commit), gzip -n.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=openwrt/pkg-common.sh
. "$here/pkg-common.sh"

parse_pkg_args build-ipk.sh "$repo_root/dist/packages" "$@"
tar --version 2>/dev/null | grep -q 'GNU tar' || { echo "build-ipk.sh: needs GNU tar" >&2; exit 1; }

epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo_root" log -1 --format=%ct 2>/dev/null || date +%s)}
tarc() { tar --format=gnu --numeric-owner --owner=0 --group=0 --sort=name --mtime="@$epoch" "$@"; }

work=$(mktemp -d "${TMPDIR:-/tmp}/edgepass-ipk.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root" "$work/control" "$work/outer"
stage_root "$work/root" "$binary"

(cd "$work/root" && tarc -cpf - .) | gzip -n -9 > "$work/outer/data.tar.gz"
installed_size=$(gzip -dc "$work/outer/data.tar.gz" | wc -c)

# Field order of OpenWrt's include/package-pack.mk; Description last, its lines indented.
{
    echo "Package: $PKG_NAME"
    echo "Version: $version"
    echo "Depends: libc"
    echo "License: $PKG_LICENSE"
    echo "Section: $PKG_SECTION"
    echo "SourceDateEpoch: $epoch"
    echo "Architecture: $arch"
    echo "Installed-Size: $installed_size"
    echo "Description:  $PKG_DESCRIPTION"
} > "$work/control/control"
echo /etc/config/edgepass > "$work/control/conffiles"
write_postinst "$work/control/postinst"
write_prerm "$work/control/prerm"
chmod 0644 "$work/control/control" "$work/control/conffiles"
(cd "$work/control" && tarc -cf - .) | gzip -n -9 > "$work/outer/control.tar.gz"

echo 2.0 > "$work/outer/debian-binary"
mkdir -p "$out"
pkg="$out/${PKG_NAME}_${version}_${arch}.ipk"
(cd "$work/outer" && tarc -cf - ./debian-binary ./data.tar.gz ./control.tar.gz) | gzip -n -9 > "$pkg"
echo "$pkg"
