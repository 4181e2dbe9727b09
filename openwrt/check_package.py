#!/usr/bin/env python3
"""Open an OpenWrt package and check its layout; helper of openwrt/check-package.sh.

  check_package.py PACKAGE EXTRACT_DIR     check, then extract the installed files to
                                           EXTRACT_DIR/root and the control file to
                                           EXTRACT_DIR/control
  check_package.py uci-to-sh UCI_FILE      print a sh snippet defining the CONFIG_* variables
                                           OpenWrt's config_load would (for the init test)

.ipk: the outer file must be a gzip'd tar holding exactly ./debian-binary ("2.0"),
./data.tar.gz and ./control.tar.gz in that order (OpenWrt's scripts/ipkg-build); control
fields in OpenWrt's order with the right values; conffiles naming files that exist; the
binary a static ELF for the package's Architecture; files owned by 0:0 with OpenWrt modes.
.apk (apk-tools v3 ADB): read with our own reader (apkv3.py, beside this file): the
container, the package info, every file's sha256, modes and owners, OpenWrt's
lib/apk/packages/edgepass.{list,conffiles,conffiles_static}, the scripts and the binary.
"""

import gzip
import hashlib
import io
import os
import re
import shlex
import struct
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import apkv3  # noqa: E402

# Fields OpenWrt's include/package-pack.mk may write, in its order.
FIELD_ORDER = ["Package", "Version", "Depends", "Conflicts", "Provides", "Alternatives",
               "Source", "SourceName", "License", "LicenseFiles", "Section", "Require-User",
               "SourceDateEpoch", "URL", "ABIVersion", "CPE-ID", "Status", "Essential",
               "Maintainer", "Architecture", "Installed-Size", "Description"]
REQUIRED = ["Package", "Version", "Architecture", "Installed-Size", "Description"]

# (ELF class, data encoding, e_machine) per OpenWrt arch prefix.
ELF_FOR_ARCH = [
    ("x86_64", (2, 1, 62)),
    ("aarch64_", (2, 1, 183)),
    ("arm_", (1, 1, 40)),
    ("mipsel_", (1, 1, 8)),
    ("mips_", (1, 2, 8)),
]
EXPECTED_FILES = {
    "./usr/bin/edgepass": 0o755,
    "./etc/init.d/edgepass": 0o755,
    # It holds the keys: 0600, as OpenWrt's INSTALL_CONF installs a config.
    "./etc/config/edgepass": 0o600,
}

failures = []


def check(cond, what):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}")
        failures.append(what)
    return cond


def elf_info(data):
    """(class, encoding, machine, has_interp) of an ELF image, or None."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return None
    cls, enc = data[4], data[5]
    end = "<" if enc == 1 else ">"
    machine = struct.unpack_from(end + "H", data, 18)[0]
    if cls == 2:
        phoff, = struct.unpack_from(end + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
    else:
        phoff, = struct.unpack_from(end + "I", data, 28)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
    interp = False
    for i in range(phnum):
        p_type, = struct.unpack_from(end + "I", data, phoff + i * phentsize)
        interp |= p_type == 3  # PT_INTERP: a dynamic loader is needed
    return cls, enc, machine, interp


def members(tar):
    return [m.name for m in tar.getmembers()]


def check_ipk(path, dest):
    raw = open(path, "rb").read()
    check(raw[:2] == b"\x1f\x8b", "outer file is gzip (not a Debian ar archive)")
    outer = tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz")
    names = members(outer)
    check(names == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"],
          f"outer tar holds ./debian-binary ./data.tar.gz ./control.tar.gz in order (got {names})")
    check(all(m.uid == 0 and m.gid == 0 for m in outer.getmembers()), "outer members owned by 0:0")
    read = lambda n: outer.extractfile(n).read()
    check(read("./debian-binary") == b"2.0\n", "debian-binary is 2.0")
    data_gz = read("./data.tar.gz")
    control = tarfile.open(fileobj=io.BytesIO(read("./control.tar.gz")), mode="r:gz")
    data = tarfile.open(fileobj=io.BytesIO(data_gz), mode="r:gz")

    cnames = members(control)
    check("./control" in cnames, "control.tar.gz has ./control")
    text = control.extractfile("./control").read().decode()
    fields, order = {}, []
    for line in text.splitlines():
        if line.startswith(" "):
            continue  # continuation of Description
        k, _, v = line.partition(":")
        fields[k] = v[1:] if v.startswith(" ") else v
        order.append(k)
    for k in REQUIRED:
        check(k in fields, f"control has {k}")
    known = [k for k in order if k in FIELD_ORDER]
    check(known == order, f"control fields are all OpenWrt fields ({order})")
    check(order == sorted(order, key=FIELD_ORDER.index), "control fields in OpenWrt's order")
    check(order[-1] == "Description", "Description is the last field")
    check(fields.get("Package") == "edgepass", "Package: edgepass")
    check(re.fullmatch(r"[0-9][0-9A-Za-z.+~]*-r[0-9]+", fields.get("Version", "")) is not None,
          f"Version is PKG_VERSION-rPKG_RELEASE ({fields.get('Version')})")
    arch = fields.get("Architecture", "")
    base = os.path.basename(path)
    check(base == f"edgepass_{fields.get('Version')}_{arch}.ipk",
          f"file name is edgepass_VERSION_ARCH.ipk ({base})")
    size = len(gzip.decompress(data_gz))
    check(fields.get("Installed-Size") == str(size),
          f"Installed-Size is the uncompressed data.tar size ({fields.get('Installed-Size')} vs {size})")

    if check("./conffiles" in cnames, "control.tar.gz has ./conffiles"):
        conf = control.extractfile("./conffiles").read().decode().split()
        check(conf == ["/etc/config/edgepass"], f"conffiles lists /etc/config/edgepass ({conf})")
        check(all("." + c in members(data) for c in conf), "every conffile is in data.tar.gz")
    for script in ("./postinst", "./prerm"):
        if check(script in cnames, f"control.tar.gz has {script}"):
            m = control.getmember(script)
            body = control.extractfile(script).read().decode()
            check(m.mode & 0o111 and body.startswith("#!/bin/sh"), f"{script} is an executable sh script")
            check("/lib/functions.sh" in body, f"{script} hands over to OpenWrt's default scripts")

    dmembers = {m.name: m for m in data.getmembers()}
    for name, mode in EXPECTED_FILES.items():
        m = dmembers.get(name)
        if check(m is not None and m.isfile(), f"data has {name}"):
            check(m.mode & 0o7777 == mode, f"{name} mode {oct(mode)} (got {oct(m.mode & 0o7777)})")
    check(all(m.uid == 0 and m.gid == 0 for m in data.getmembers()), "data owned by 0:0 (root)")
    check(all(n in (".", "./") or n.startswith("./") for n in dmembers), "data member names start with ./")

    check_binary(data.extractfile("./usr/bin/edgepass").read(), arch)

    root = os.path.join(dest, "root")
    os.makedirs(root, exist_ok=True)
    data.extractall(root, filter="data") if hasattr(tarfile, "data_filter") else data.extractall(root)
    with open(os.path.join(dest, "control"), "w") as f:
        f.write(text)


def check_binary(image, arch):
    info = elf_info(image)
    if not check(info is not None, "usr/bin/edgepass is an ELF file"):
        return
    want = next((elf for prefix, elf in ELF_FOR_ARCH if arch == prefix or arch.startswith(prefix)), None)
    if check(want is not None, f"Architecture {arch} is one we know"):
        check(info[:3] == want, f"ELF class/endianness/machine match {arch} (got {info[:3]})")
    check(not info[3], "binary is static (no PT_INTERP)")


APK_SCRIPTS = {
    # script: what it must call from OpenWrt's /lib/functions.sh
    "post-install": "default_postinst",
    "post-upgrade": "default_postinst",
    "pre-deinstall": "default_prerm",
}
APK_META = "lib/apk/packages/edgepass"


def check_apk(path, dest):
    """Open the .apk with our own reader (apkv3.py) and check it like the .ipk."""
    raw = open(path, "rb").read()
    check(raw[:4] in (b"ADBd", b"ADB."), f"apk-tools v3 ADB container (magic {raw[:4]!r})")
    try:
        pkg = apkv3.read(raw)
    except apkv3.FormatError as e:
        check(False, f"the package reads as apk v3: {e}")
        return
    check(True, f"reads as apk v3: schema pckg, ADB compat 0, {pkg.compression} compression, "
                f"{len(pkg.files)} files, every DATA block in order and matching its sha256")
    check(pkg.uid_ok is True, "info.hashes is the package's unique id (sha256 of the ADB block)")
    info = pkg.meta.get("info", {})
    check(info.get("name") == "edgepass", f"name: edgepass ({info.get('name')})")
    version = info.get("version", "")
    check(re.fullmatch(r"[0-9][0-9.]*[a-z]?(_[a-z]+[0-9]*)*-r[0-9]+", version) is not None,
          f"version is PKG_VERSION-rPKG_RELEASE in apk's syntax ({version})")
    arch = info.get("arch", "")
    base, parent = os.path.basename(path), os.path.basename(os.path.dirname(os.path.abspath(path)))
    check(base == f"edgepass-{version}.apk", f"file name is edgepass-VERSION.apk ({base})")
    check(parent == arch, f"file is in a directory named after its arch ({parent}/ vs {arch})")
    for field in ("description", "license", "origin"):
        check(bool(info.get(field)), f"info has {field} ({info.get(field)})")
    check(info.get("depends") == [{"name": "libc"}], f"depends: libc ({info.get('depends')})")
    regular = [(p, f, c) for p, f, c in pkg.files if "target" not in f]
    size = sum(len(c) for _, _, c in regular)
    check(info.get("installed-size") == size,
          f"installed-size is the sum of the file sizes ({info.get('installed-size')} vs {size})")

    files = {p: f for p, f, _ in pkg.files}
    content = {p: c for p, _, c in pkg.files}
    for name, mode in EXPECTED_FILES.items():
        f = files.get(name[2:])
        if check(f is not None and "target" not in f, f"package has {name[1:]}"):
            got = f.get("acl", {}).get("mode")
            check(got == mode, f"{name[1:]} mode {oct(mode)} (got {oct(got or 0)})")
    extra = sorted(set(files) - {n[2:] for n in EXPECTED_FILES}
                   - {APK_META + s for s in (".list", ".conffiles", ".conffiles_static")})
    check(not extra, f"no unexpected files ({extra})")
    acls = [f.get("acl", {}) for f in files.values()] + [d.get("acl", {}) for d in pkg.meta["paths"]]
    check(all(a.get("user") == "root" and a.get("group") == "root" for a in acls),
          "every file and directory is owned by root:root")
    check(all(d.get("acl", {}).get("mode") == 0o755 for d in pkg.meta["paths"]), "directories are 0755")

    # OpenWrt's package database files: the file list, the conffiles and their sha256.
    text = lambda p: (content.get(p) or b"").decode()
    listed = text(APK_META + ".list").split()
    own = sorted("/" + n[2:] for n in EXPECTED_FILES)
    check(listed == own, f"{APK_META}.list lists the package's files ({listed})")
    conf = text(APK_META + ".conffiles").split()
    if check(conf == ["/etc/config/edgepass"], f"{APK_META}.conffiles lists /etc/config/edgepass ({conf})"):
        want = hashlib.sha256(content.get("etc/config/edgepass") or b"").hexdigest()
        check(text(APK_META + ".conffiles_static").split() == ["/etc/config/edgepass", want],
              f"{APK_META}.conffiles_static holds the conffile's sha256")
    check(files.get("etc/config/edgepass", {}).get("hash") is not None,
          "the conffile has a sha256 in the package (apk keeps an edited /etc file, writes .apk-new)")

    scripts = pkg.meta.get("scripts", {})
    check(sorted(scripts) == sorted(APK_SCRIPTS), f"scripts are {sorted(APK_SCRIPTS)} ({sorted(scripts)})")
    for name, default in APK_SCRIPTS.items():
        body = scripts.get(name, "")
        if not body:
            continue
        check(body.startswith("#!/bin/sh\n"), f"{name} is a sh script")
        check("/lib/functions.sh" in body and re.search(rf"^{default}$", body, re.M) is not None
              and 'export pkgname="edgepass"' in body,
              f"{name} sets pkgname and hands over to OpenWrt's {default}")
        ok = subprocess.run(["sh", "-n"], input=body.encode(), capture_output=True).returncode == 0
        check(ok, f"{name} parses (sh -n)")
    check("export PKG_UPGRADE=1" in scripts.get("post-upgrade", ""), "post-upgrade sets PKG_UPGRADE=1")

    if files.get("usr/bin/edgepass"):
        check_binary(content["usr/bin/edgepass"], arch)
    root = os.path.join(dest, "root")
    os.makedirs(root, exist_ok=True)
    apkv3.extract(pkg, root)
    with open(os.path.join(dest, "control"), "w") as f:  # the fields check-package.sh reads
        f.write(f"Package: {info.get('name')}\nVersion: {version}\nArchitecture: {arch}\n")


def uci_to_sh(path):
    """Turn a UCI file into the CONFIG_* variables OpenWrt's config_load defines."""
    sections, out, current, anon = [], [], None, 0
    for line in open(path):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "config":
            if len(words) > 2:
                current = words[2]
            else:
                anon += 1
                current = f"cfg{anon:02d}"
            sections.append(current)
            out.append(f"CONFIG_{current}_TYPE={shlex.quote(words[1])}")
        elif words[0] == "option" and current:
            out.append(f"CONFIG_{current}_{words[1]}={shlex.quote(words[2] if len(words) > 2 else '')}")
    out.append(f"CONFIG_SECTIONS={shlex.quote(' '.join(sections))}")
    print("\n".join(out))


def main(argv):
    if len(argv) == 3 and argv[1] == "uci-to-sh":
        uci_to_sh(argv[2])
        return 0
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, dest = argv[1], argv[2]
    if path.endswith(".ipk"):
        check_ipk(path, dest)
    elif path.endswith(".apk"):
        check_apk(path, dest)
    else:
        print(f"unknown package type: {path}", file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
