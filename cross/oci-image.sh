#!/usr/bin/env bash
# Write an OCI image layout of the scratch image (same content as the Dockerfile) without
# Docker, and check it with skopeo (Debian package `skopeo`).
#
#   cross/oci-image.sh [--out DIR] [--tag TAG] [--ca FILE] [--no-check] TARGET|TRIPLE=BINARY...|all
#
# TARGET uses dist/TARGET/edgepass. The layout goes to DIR (default dist/oci); load it with
#   skopeo copy --all oci:dist/oci:latest docker://REGISTRY/edgepass:TAG
#   skopeo copy oci:dist/oci:latest docker-daemon:edgepass:latest   (where Docker runs)
# The check, per platform: `skopeo inspect` finds it in the index with the right
# architecture; `skopeo copy` to a dir: (which verifies every blob's sha256); the layer holds
# /edgepass, byte-identical to the input, and the CA roots; the /edgepass from the layer
# runs (`--version`, under qemu-user for foreign architectures).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out="$root/dist/oci"
tag=latest
check=1
ca_args=()
pairs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --ca) ca_args=(--ca "$2"); shift 2 ;;
        --no-ca) ca_args=(--no-ca); shift ;;
        --no-check) check=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        all) for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl \
                    armv7-unknown-linux-musleabihf arm-unknown-linux-musleabi \
                    mipsel-unknown-linux-musl mips-unknown-linux-musl; do
                 pairs+=("$t=$root/dist/$t/edgepass")
             done; shift ;;
        *=*) pairs+=("$1"); shift ;;
        *) pairs+=("$1=$root/dist/$1/edgepass"); shift ;;
    esac
done
[ ${#pairs[@]} -gt 0 ] || { echo "usage: $0 [--out DIR] [--tag TAG] TARGET|TRIPLE=BINARY..." >&2; exit 2; }

rm -rf "$out"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)} \
    python3 "$here/oci_image.py" --tag "$tag" ${ca_args[@]+"${ca_args[@]}"} "$out" "${pairs[@]}"
[ "$check" = 1 ] || exit 0

command -v skopeo >/dev/null || { echo "oci-image.sh: skopeo not installed (apt-get install skopeo)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/edgepass-oci.XXXXXX")
trap 'rm -rf "$work"' EXIT

fails=0
for pair in "${pairs[@]}"; do
    triple=${pair%%=*} binary=${pair#*=}
    case "$triple" in
        x86_64-*) arch=amd64 variant= runner= ;;
        aarch64-*) arch=arm64 variant=v8 runner=qemu-aarch64 ;;
        armv7-*) arch=arm variant=v7 runner=qemu-arm ;;
        arm-*) arch=arm variant=v6 runner=qemu-arm ;;
        mipsel-*) arch=mipsle variant= runner=qemu-mipsel ;;
        mips-*) arch=mips variant= runner=qemu-mips ;;
    esac
    sel=(--override-os linux --override-arch "$arch")
    [ -n "$variant" ] && sel+=(--override-variant "$variant")
    got=$(skopeo inspect "${sel[@]}" --format '{{.Os}}/{{.Architecture}}' "oci:$out:$tag") || { echo "FAIL $triple: skopeo inspect"; fails=$((fails + 1)); continue; }
    [ "$got" = "linux/$arch" ] || { echo "FAIL $triple: skopeo inspect says $got"; fails=$((fails + 1)); continue; }
    d="$work/$triple"
    skopeo copy -q "${sel[@]}" "oci:$out:$tag" "dir:$d" >/dev/null || { echo "FAIL $triple: skopeo copy (digest check)"; fails=$((fails + 1)); continue; }
    layer=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["layers"][0]["digest"].split(":")[1]); assert len(m["layers"])==1' "$d/manifest.json")
    mkdir -p "$d/rootfs"
    tar -xzf "$d/$layer" -C "$d/rootfs"
    if ! cmp -s "$d/rootfs/edgepass" "$binary"; then
        echo "FAIL $triple: /edgepass in the layer differs from $binary"; fails=$((fails + 1)); continue
    fi
    if [ "${ca_args[0]-}" != --no-ca ] && [ ! -s "$d/rootfs/etc/ssl/certs/ca-certificates.crt" ]; then
        echo "FAIL $triple: no CA roots in the layer"; fails=$((fails + 1)); continue
    fi
    if ! v=$(timeout 60 $runner "$d/rootfs/edgepass" --version 2>&1); then
        echo "FAIL $triple: /edgepass from the layer does not run: $v"; fails=$((fails + 1)); continue
    fi
    echo "ok   $triple: linux/$arch${variant:+/$variant} in oci:$out:$tag, blobs verified by skopeo copy, layer /edgepass identical, runs: $v"
done
[ "$fails" = 0 ] || { echo "oci-image.sh: $fails platform(s) FAILED"; exit 1; }
