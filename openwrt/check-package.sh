#!/usr/bin/env bash
# Open OpenWrt packages built by build-ipk.sh / build-apk.sh and check them.
#
#   openwrt/check-package.sh [--no-smoke] [--server BIN] PACKAGE...
#
# For each package:
#   1. layout, control fields (.apk: package info), architecture, conffiles, scripts, file
#      modes, owners and hashes, and the ELF header of the binary (check_package.py; the .apk
#      is read with our own reader, openwrt/apkv3.py, whose round trip test runs first);
#   2. the init script: sh syntax, procd (USE_PROCD, procd_open_instance,
#      procd_set_param command / respawn, procd_close_instance, config_foreach, and no
#      procd_set_param file, which would restart every instance on any edit), and a run of
#      its start_service against stub UCI/procd functions: shipped config -> no instance;
#      every section enabled -> one instance per section, each `edgepass URL`; option key
#      (URL delimiters, quotes, UTF-8) reaches edgepass as written in EDGEPASS_KEY, not on
#      the command line; respawn_* options apply per section;
#   3. the UCI file ships every section disabled (and so does config-examples/edgepass.uci);
#   4. the packaged binary runs under qemu-<arch> (`--version`) and, when a host server
#      binary exists (--server, default dist/x86_64-unknown-linux-musl/edgepass), passes
#      cross/smoke.sh as the tunnel client.
# Exit status 0 when every package passed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=openwrt/pkg-common.sh
. "$here/pkg-common.sh"

smoke=1
server="$repo_root/dist/x86_64-unknown-linux-musl/edgepass"
pkgs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-smoke) smoke=0; shift ;;
        --server) server=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) pkgs+=("$1"); shift ;;
    esac
done
[ ${#pkgs[@]} -gt 0 ] || { echo "usage: $0 [--no-smoke] [--server BIN] PACKAGE..." >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/edgepass-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
# Output under an ok/FAIL line, indented to stand apart from it.
indent() { sed 's/^/     /'; }

# Stub versions of OpenWrt's config_* (functions.sh) and procd_* (procd.sh) helpers, enough
# to run start_service and record the instances it asks procd for. The init script runs
# PROG (/usr/bin/edgepass) to check each URL: the harness runs $3 in its place (the
# package's own binary, when it runs here), or `true`, which passes every URL; commands
# are recorded with the installed path.
init_harness() {
    local init=$1 uci_vars=$2 prog=${3:-true}
    sh -c '
        set -e
        . "$1"
        config_load() { :; }
        config_get() {
            eval "__v=\${CONFIG_$2_$3-}"
            [ -n "$__v" ] || __v=${4-}
            eval "$1=\$__v"
        }
        config_get_bool() {
            config_get "$1" "$2" "$3" "${4-0}"
            eval "__v=\$$1"
            case "$__v" in
                1|on|true|yes|enabled) eval "$1=1" ;;
                0|off|false|no|disabled) eval "$1=0" ;;
                *) eval "$1=${4-0}" ;;
            esac
        }
        config_foreach() {
            __fn=$1 __type=$2
            for __s in $CONFIG_SECTIONS; do
                eval "__t=\$CONFIG_${__s}_TYPE"
                # As in OpenWrt, a section that fails does not stop the others.
                [ "$__t" != "$__type" ] || "$__fn" "$__s" || :
            done
            return 0
        }
        procd_open_instance() { echo "open ${1-}"; }
        procd_set_param() {
            __k=$1; shift; printf "param %s" "$__k"
            for __a; do
                [ "$__a" != "$PROG" ] || __a=/usr/bin/edgepass
                printf " [%s]" "$__a"
            done
            echo
        }
        procd_close_instance() { echo close; }
        procd_add_reload_trigger() { :; }
        logger() { echo "logger $*"; }
        . "$2"
        PROG=$3
        start_service
    ' harness "$uci_vars" "$init" "$prog"
}

check_init_and_config() {
    local root=$1 init="$1/etc/init.d/edgepass" uci="$1/etc/config/edgepass"
    if sh -n "$init"; then ok "init script parses (sh -n)"; else bad "init script has a syntax error"; fi
    local f
    for f in 'USE_PROCD=1' 'procd_open_instance' 'procd_set_param command' \
             'procd_set_param respawn' 'procd_close_instance' 'config_foreach' \
             'procd_add_reload_trigger'; do
        if grep -q "$f" "$init"; then ok "init script uses $f"; else bad "init script lacks $f"; fi
    done
    # procd would checksum a `file` into every instance: one edit would restart them all.
    if grep -q '^[[:space:]]*procd_set_param file' "$init"; then
        bad "init script ties every instance to a file (procd_set_param file): any edit restarts all"
    else
        ok "init script ties no instance to a file, so reload restarts only changed sections"
    fi
    head -n 1 "$init" | grep -q '^#!/bin/sh /etc/rc.common' && ok "init script runs under /etc/rc.common" \
        || bad "init script shebang is not '#!/bin/sh /etc/rc.common'"

    python3 "$here/check_package.py" uci-to-sh "$uci" > "$work/uci.sh" || { bad "UCI file does not parse"; return; }
    local sections nsections
    sections=$(sed -n "s/^CONFIG_\(.*\)_TYPE=tunnel$/\1/p" "$work/uci.sh")
    nsections=$(echo "$sections" | grep -c .)
    [ "$nsections" -gt 0 ] && ok "UCI file has $nsections tunnel sections" || bad "UCI file has no tunnel section"
    local s
    for s in $sections; do
        grep -qx "CONFIG_${s}_enabled=0" "$work/uci.sh" && ok "section $s ships disabled" \
            || bad "section $s does not ship with enabled '0'"
    done

    local out
    out=$(init_harness "$init" "$work/uci.sh" 2>&1) || { bad "start_service failed: $out"; return; }
    [ -z "$(echo "$out" | grep '^open')" ] && ok "shipped config starts no instance" \
        || bad "shipped config starts instances: $out"

    sed 's/^\(CONFIG_[A-Za-z0-9_]*_enabled\)=.*/\1=1/' "$work/uci.sh" > "$work/uci-on.sh"
    out=$(init_harness "$init" "$work/uci-on.sh" 2>&1) || { bad "start_service (all enabled) failed: $out"; return; }
    local opened commands respawns terms
    opened=$(echo "$out" | grep -c '^open ')
    commands=$(echo "$out" | grep -cE '^param command \[/usr/bin/edgepass\] \[(server|client|relay|visit)://[^]]+\]$')
    respawns=$(echo "$out" | grep -c '^param respawn ')
    # edgepass drains for SHUTDOWN_TIMEOUT (5 s) on SIGTERM: procd must wait longer before
    # its SIGKILL than that (its own default is 5 s).
    terms=$(echo "$out" | grep -cE '^param term_timeout \[([6-9]|[1-9][0-9]+)\]$')
    if [ "$opened" = "$nsections" ] && [ "$commands" = "$nsections" ] && [ "$respawns" = "$nsections" ] \
        && [ "$terms" = "$nsections" ]; then
        ok "all enabled: $opened instances, one per section, each 'edgepass URL' with respawn and term_timeout > 5 s"
        echo "$out" | sed -n 's/^param command /     /p'
    else
        bad "all enabled: $opened instances, $commands well-formed commands, $respawns respawns, $terms term_timeouts over 5 s for $nsections sections"
        echo "$out" | indent
    fi

    # procd restarts an instance on reload when any of its parameters differ. After an edit
    # to one section, only that section's instance may differ.
    local first changed edited
    first=$(echo "$sections" | head -n 1)
    { cat "$work/uci-on.sh"; echo "CONFIG_${first}_url='client://edited@vps.example.com:1/127.0.0.1:2'"; } > "$work/uci-edit.sh"
    edited=$(init_harness "$init" "$work/uci-edit.sh" 2>&1) || { bad "start_service (one section edited) failed: $edited"; return; }
    # One line per instance: its name, then all its parameters.
    per_instance() { awk '/^open /{n=$2; p=""; next} /^close$/{print n "\t" p; next} {p=p " " $0}' | sort; }
    changed=$(diff <(echo "$out" | per_instance) <(echo "$edited" | per_instance) | sed -n 's/^> \([^\t]*\)\t.*/\1/p' | tr '\n' ' ')
    [ "$changed" = "$first " ] && ok "editing section $first changes that instance only (the others keep their parameters)" \
        || bad "editing section $first changes the parameters of instances: ${changed:-none}"
}

# Options of a section beyond the shipped file. Option key goes to edgepass in EDGEPASS_KEY,
# byte for byte (URL delimiters, quotes, spaces and non-ASCII text included), and never on
# the command line, which every local user can read. respawn_* options set procd's respawn
# per section.
check_section_options() {
    local init="$1/etc/init.d/edgepass" out want
    python3 - "$work/uci-key.sh" "$work/url-key.txt" "$work/env-key.txt" <<'PY'
import shlex, sys
key = "Zx/9+q?#@%:a b==;'\"\u00fc\u20ac~-._"
with open(sys.argv[1], "w") as f:
    f.write("CONFIG_k_TYPE=tunnel\nCONFIG_k_enabled=1\nCONFIG_k_role=client\n"
            f"CONFIG_k_key={shlex.quote(key)}\nCONFIG_k_tunnel=vps.example.com:10101\n"
            "CONFIG_k_target=127.0.0.1:22\nCONFIG_k_query='log=info&noudp=1'\n"
            "CONFIG_r_TYPE=tunnel\nCONFIG_r_enabled=1\nCONFIG_r_url=relay://:4001\n"
            "CONFIG_r_respawn_threshold=7200\nCONFIG_r_respawn_timeout=60\n"
            "CONFIG_r_respawn_retry=3\n"
            "CONFIG_b_TYPE=tunnel\nCONFIG_b_enabled=1\nCONFIG_b_url=relay://:4002\n"
            "CONFIG_b_respawn_timeout=5s\n"
            "CONFIG_SECTIONS='k r b'\n")
with open(sys.argv[2], "w") as f:
    f.write("client://vps.example.com:10101/127.0.0.1:22?log=info&noudp=1\n")
with open(sys.argv[3], "w") as f:
    f.write(f"EDGEPASS_KEY={key}\n")
PY
    local want env
    want=$(cat "$work/url-key.txt")
    env=$(cat "$work/env-key.txt")
    out=$(init_harness "$init" "$work/uci-key.sh" 2>&1) || { bad "start_service (key section) failed: $out"; return; }
    if echo "$out" | grep -qxF "param command [/usr/bin/edgepass] [$want]" \
        && echo "$out" | grep -qxF "param env [$env]"; then
        ok "a key with / ? # @ % : space, quotes and UTF-8 goes in EDGEPASS_KEY as written, not in: $want"
    else
        bad "the key is not passed as [$env] beside the command [$want]"
        echo "$out" | indent
    fi
    # Each instance's respawn line: the defaults, the section's own, and the defaults again
    # (with a warning) for a value that is not a whole number.
    local respawns
    respawns=$(echo "$out" | sed -n 's/^param respawn //p' | tr '\n' ' ')
    if [ "$respawns" = "[3600] [30] [0] [7200] [60] [3] [3600] [30] [0] " ] \
        && echo "$out" | grep -q "option respawn_timeout '5s' is not a whole number"; then
        ok "respawn_threshold, respawn_timeout and respawn_retry are read per section"
    else
        bad "respawn options per section: got $respawns"
        echo "$out" | indent
    fi
}

# A section whose URL the binary refuses (`edgepass --check` exits 2) is left out with its
# reason, rather than handed to procd to restart forever; the others start. Needs the
# package's binary to run on this host.
check_refused_sections() {
    local root=$1 init="$1/etc/init.d/edgepass" bin="$1/usr/bin/edgepass" out opened
    if ! "$bin" --version >/dev/null 2>&1; then
        echo "skip refused-section test: the packaged binary does not run on this host"; return 0
    fi
    cat > "$work/uci-refused.sh" <<'EOF_UCI'
CONFIG_good_TYPE=tunnel
CONFIG_good_enabled=1
CONFIG_good_url='client://k@vps.example.com:10101/127.0.0.1:22'
CONFIG_port0_TYPE=tunnel
CONFIG_port0_enabled=1
CONFIG_port0_url='client://k@vps.example.com:10101/127.0.0.1:0'
CONFIG_nofile_TYPE=tunnel
CONFIG_nofile_enabled=1
CONFIG_nofile_url='server://k@:10101/:8080?tls=2&crt=/nonexistent/e.crt&key=/nonexistent/e.key'
CONFIG_keyed_TYPE=tunnel
CONFIG_keyed_enabled=1
CONFIG_keyed_role=client
CONFIG_keyed_key='s3cret with spaces'
CONFIG_keyed_tunnel=vps.example.com:10101
CONFIG_keyed_target=127.0.0.1:22
CONFIG_SECTIONS='good port0 nofile keyed'
EOF_UCI
    out=$(init_harness "$init" "$work/uci-refused.sh" "$bin" 2>&1) || { bad "start_service (refused sections) failed: $out"; return; }
    opened=$(echo "$out" | sed -n 's/^open //p' | tr '\n' ' ')
    if [ "$opened" = "good keyed " ] \
        && echo "$out" | grep -q "^edgepass: section 'port0' not started: port 0 cannot be dialed" \
        && echo "$out" | grep -q "^edgepass: section 'nofile' not started: cannot read the certificate file" \
        && echo "$out" | grep -q "^logger -t edgepass -p daemon.err section 'nofile' not started"; then
        ok "sections the binary refuses (--check) are left out with their reason; the others start"
    else
        bad "refused sections: opened '$opened'"
        echo "$out" | indent
    fi
}

run_binary() {
    local root=$1 arch=$2 triple runner out
    triple=$(triple_for_arch "$arch") || { bad "no Rust target known for $arch"; return; }
    case "$triple" in
        x86_64-*) runner= ;;
        aarch64-*) runner=qemu-aarch64 ;;
        arm*) runner=qemu-arm ;;
        mipsel-*) runner=qemu-mipsel ;;
        mips-*) runner=qemu-mips ;;
    esac
    if out=$(timeout 60 $runner "$root/usr/bin/edgepass" --version 2>&1) && [[ "$out" == edgepass* ]]; then
        ok "packaged binary runs under ${runner:-the host}: $out"
    else
        bad "packaged binary did not run under ${runner:-the host}: $out"; return
    fi
    [ "$smoke" = 1 ] || return 0
    if [ ! -x "$server" ]; then
        echo "skip smoke test: no host server binary at $server"; return 0
    fi
    mkdir -p "$work/dist/$triple"
    cp "$root/usr/bin/edgepass" "$work/dist/$triple/edgepass"
    if "$repo_root/cross/smoke.sh" --dist "$work/dist" --server "$server" "$triple" | indent; then
        ok "packaged binary passes the tunnel smoke test"
    else
        bad "packaged binary fails the tunnel smoke test"
    fi
    rm -rf "$work/dist"
}

if printf '%s\n' "${pkgs[@]}" | grep -q '\.apk$'; then
    echo "==> openwrt/test_apkv3.py (the .apk writer and reader)"
    if out=$(python3 "$here/test_apkv3.py" 2>&1); then
        ok "apkv3.py round trip: $(echo "$out" | grep '^Ran ')"
    else
        bad "apkv3.py round trip failed"; echo "$out" | indent
    fi
fi

# The example UCI file is copied to routers as it is: like the packaged one, it must not
# start a tunnel with a CHANGE-ME key.
example="$repo_root/config-examples/edgepass.uci"
if [ -f "$example" ]; then
    echo "==> config-examples/edgepass.uci"
    if python3 "$here/check_package.py" uci-to-sh "$example" > "$work/example.sh"; then
        enabled=$(grep -E '^CONFIG_[A-Za-z0-9_]+_enabled=' "$work/example.sh" | grep -vc '_enabled=0$')
        sections=$(grep -c '_TYPE=tunnel$' "$work/example.sh")
        disabled=$(grep -c '_enabled=0$' "$work/example.sh")
        if [ "$enabled" = 0 ] && [ "$disabled" = "$sections" ]; then
            ok "every section of the example ($sections) ships with enabled '0'"
        else
            bad "the example UCI file has sections without enabled '0'"
        fi
    else
        bad "config-examples/edgepass.uci does not parse"
    fi
fi

for pkg in "${pkgs[@]}"; do
    echo "==> $pkg"
    dest="$work/pkg"; rm -rf "$dest"; mkdir -p "$dest"
    if [ ! -f "$pkg" ]; then bad "no such file"; continue; fi
    python3 "$here/check_package.py" "$pkg" "$dest" || fails=$((fails + 1))
    if [[ "$pkg" == *.apk ]] && command -v apk >/dev/null && apk --version 2>/dev/null | grep -q 'apk-tools 3'; then
        # Where apk-tools v3 happens to be installed, it reads the package too.
        apk verify --allow-untrusted "$pkg" >/dev/null 2>&1 && ok "apk-tools: apk verify" || bad "apk-tools: apk verify failed"
    fi
    arch=$(sed -n 's/^Architecture: //p' "$dest/control" 2>/dev/null)
    [ -d "$dest/root/etc" ] || { bad "nothing extracted"; continue; }
    check_init_and_config "$dest/root"
    check_section_options "$dest/root"
    check_refused_sections "$dest/root"
    run_binary "$dest/root" "$arch"
done

if [ "$fails" -gt 0 ]; then
    echo "check-package: $fails check(s) FAILED"
    exit 1
fi
echo "check-package: all checks passed for ${#pkgs[@]} package(s)"
