#!/usr/bin/env bash
# Build an OpenWrt .apk (apk-tools v3 ADB package; OpenWrt 25.x and snapshots) from a
# cross-built binary, without the OpenWrt SDK and without apk-tools: openwrt/apkv3.py writes
# the package from the same arguments OpenWrt's include/package-pack.mk gives `apk mkpkg`.
#
#   openwrt/build-apk.sh [--arch OPENWRT_ARCH] [--out DIR] TARGET_TRIPLE BINARY [VERSION]
#
# Writes DIR/ARCH/edgepass-VERSION.apk (default DIR: dist/packages/apk) and prints its path.
# Contents as in the .ipk, plus OpenWrt's /lib/apk/packages/edgepass.{list,conffiles,
# conffiles_static}; scripts post-install, post-upgrade and pre-deinstall in OpenWrt's shape.
# Files are root:root, every mtime is SOURCE_DATE_EPOCH (else the last commit's date), so the
# same input gives the same package. Unsigned: install with `apk add --allow-untrusted`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=openwrt/pkg-common.sh
. "$here/pkg-common.sh"

parse_pkg_args build-apk.sh "$repo_root/dist/packages/apk" "$@"
command -v python3 >/dev/null || { echo "build-apk.sh: needs python3" >&2; exit 1; }

epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo_root" log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d "${TMPDIR:-/tmp}/edgepass-apk.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
stage_root "$root" "$binary"

# The package database files OpenWrt puts in every apk: the list of the package's own files
# (read by default_postinst/default_prerm to find the init script; like OpenWrt's, it lists
# neither itself nor the conffiles files) and the conffiles with their sha256 (sysupgrade
# uses them to tell an edited config from the shipped one).
meta="$root/lib/apk/packages"
(cd "$root" && find . \( -type f -o -type l \) -print | sed 's|^\.||' | LC_ALL=C sort) > "$work/list"
install -d -m 0755 "$meta"
mv "$work/list" "$meta/$PKG_NAME.list"
echo "/etc/config/edgepass" > "$meta/$PKG_NAME.conffiles"
echo "/etc/config/edgepass $(sha256sum "$root/etc/config/edgepass" | cut -d' ' -f1)" > "$meta/$PKG_NAME.conffiles_static"
chmod 0644 "$meta"/*
find "$root" -type d -exec chmod 0755 {} +

# apk runs its scripts with no package arguments, so OpenWrt's scripts set root and pkgname
# for default_postinst/default_prerm (lib/functions.sh); post-upgrade is post-install with
# PKG_UPGRADE=1 (the service is restarted, not enabled again).
header='#!/bin/sh'
body_postinst="[ \"\${IPKG_NO_SCRIPT}\" = \"1\" ] && exit 0
[ -s \"\${IPKG_INSTROOT}/lib/functions.sh\" ] || exit 0
. \"\${IPKG_INSTROOT}/lib/functions.sh\"
export root=\"\${IPKG_INSTROOT}\"
export pkgname=\"$PKG_NAME\"
add_group_and_user
default_postinst"
printf '%s\n%s\n' "$header" "$body_postinst" > "$work/post-install"
printf '%s\n%s\n%s\n' "$header" "export PKG_UPGRADE=1" "$body_postinst" > "$work/post-upgrade"
cat > "$work/pre-deinstall" <<SCRIPT
#!/bin/sh
[ -s "\${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "\${IPKG_INSTROOT}/lib/functions.sh"
export root="\${IPKG_INSTROOT}"
export pkgname="$PKG_NAME"
default_prerm
SCRIPT

mkdir -p "$out/$arch"
pkg="$out/$arch/$PKG_NAME-$version.apk"
python3 "$here/apkv3.py" build \
    --mtime "$epoch" \
    --info "name:$PKG_NAME" \
    --info "version:$version" \
    --info "description:$PKG_DESCRIPTION" \
    --info "arch:$arch" \
    --info "license:$PKG_LICENSE" \
    --info "origin:$PKG_NAME" \
    --info "depends:libc" \
    --script "post-install:$work/post-install" \
    --script "post-upgrade:$work/post-upgrade" \
    --script "pre-deinstall:$work/pre-deinstall" \
    --files "$root" \
    --output "$pkg"
echo "$pkg"
