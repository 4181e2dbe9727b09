#!/usr/bin/env python3
"""Write and read apk-tools v3 packages (the ADB ".apk" of OpenWrt 25.x), standard library only.

  apkv3.py build --files DIR --output FILE [--mtime EPOCH] [--no-compress]
                 --info KEY:VALUE... [--script TYPE:FILE...]
  apkv3.py dump PACKAGE                 print the package metadata as JSON
  apkv3.py extract PACKAGE DIR          verify every file hash and unpack the files into DIR

`build` takes the arguments of `apk mkpkg` that OpenWrt's include/package-pack.mk passes
(--info name/version/description/arch/license/origin/url/maintainer/depends/provides/...,
--script post-install/pre-deinstall/...), so it can stand in for `apk mkpkg` where
apk-tools v3 is not installed. Every file and directory is written as owned by root:root
with its mode from DIR; every mtime is EPOCH (default: SOURCE_DATE_EPOCH, else 0). The same
input gives the same bytes. Packages are unsigned: install them with
`apk add --allow-untrusted`.

The format, as described by apk-tools' apk-v3(5) and apk-package(5) manuals:

* The file is "ADBd" followed by a raw deflate stream (or, uncompressed, directly) of:
  "ADB." + the schema id "pckg" (u32 LE), then blocks. A block starts with a u32 LE word:
  type in the top 2 bits (0 ADB, 1 SIG, 2 DATA), in the low 30 bits the block size
  including that word; the next block starts at the next multiple of 8.
* One ADB block, then optional SIG blocks, then DATA blocks. The ADB block holds a 4-byte
  header (compat version 0, version 0, 2 reserved) and the u32 root value, then the values.
* A value is a u32 LE: type in the top 4 bits, in the low 28 bits either the value itself
  (null/true/false, small int) or the offset, from the start of the ADB block's payload, of
  its data: int32/int64, a blob with an 8/16/32-bit length prefix, or an object/array (a
  u32 slot count including slot 0, then one value per slot; trailing null slots dropped).
* The package object: info (name, version, unique id, description, arch, ...), paths (an
  array of directories sorted by name, each with an acl and its files sorted by name; each
  file with its acl, size, mtime and sha256), scripts, triggers, replaces-priority.
* A DATA block per non-empty regular file, in directory and file order: u32 directory
  index, u32 file index (both 1-based), then the file's bytes.
"""

import hashlib
import json
import os
import re
import stat
import struct
import sys
import zlib

# Value types (top 4 bits of a value).
T_SPECIAL, T_INT, T_INT32, T_INT64 = 0x0, 0x1, 0x2, 0x3
T_BLOB8, T_BLOB16, T_BLOB32, T_ARRAY, T_OBJECT = 0x8, 0x9, 0xA, 0xD, 0xE
NULL = 0

# Blocks.
B_ADB, B_SIG, B_DATA, B_EXT = 0, 1, 2, 3

MAGIC = b"ADB."
SCHEMA_PACKAGE = 0x676B6370  # "pckg"
SCHEMA_INDEX = 0x78646E69    # "indx"

# Schemas: for every object, its fields by slot number (1-based), with a kind:
# "str", "hex" (bytes shown as hex), "int", "oct" (int shown in octal), an object schema
# name, or "[name]" for an array of that schema / scalar kind.
SCHEMAS = {
    "package": ["info:pkginfo", "paths:[dir]", "scripts:scripts", "triggers:[str]",
                "replaces-priority:int"],
    "pkginfo": ["name:str", "version:str", "hashes:hex", "description:str", "arch:str",
                "license:str", "origin:str", "maintainer:str", "url:str", "repo-commit:hex",
                "build-time:int", "installed-size:int", "file-size:int",
                "provider-priority:int", "depends:[dependency]", "provides:[dependency]",
                "replaces:[dependency]", "install-if:[dependency]", "recommends:[dependency]",
                "layer:int", "tags:[str]"],
    "dependency": ["name:str", "version:str", "match:int"],
    "dir": ["name:str", "acl:acl", "files:[file]"],
    "file": ["name:str", "acl:acl", "size:int", "mtime:int", "hash:hex", "target:hex"],
    "acl": ["mode:oct", "user:str", "group:str", "xattrs:[hex]"],
    "scripts": ["trigger:str", "pre-install:str", "post-install:str", "pre-deinstall:str",
                "post-deinstall:str", "pre-upgrade:str", "post-upgrade:str"],
}
FIELDS = {name: [f.split(":", 1) for f in fields] for name, fields in SCHEMAS.items()}


def slot(schema, field):
    """1-based slot of FIELD in SCHEMA."""
    for i, (name, _) in enumerate(FIELDS[schema]):
        if name == field:
            return i + 1
    raise KeyError(f"{schema} has no field {field}")


# Dependency match bits (apk's version operators: equal 1, less 2, greater 4, fuzzy 8,
# conflict 16) for "name>=1.0"-style strings. "=" is the default and is not written; a
# dependency without a version matches any (7).
DEP_OPS = {"<": 2, "=": 1, ">": 4, "<=": 3, ">=": 5, "~": 9}
DEP_EQUAL, DEP_ANY, DEP_CONFLICT = 1, 7, 16


class FormatError(Exception):
    pass


# ---------------------------------------------------------------------------- writer


class AdbWriter:
    """Builds the payload of an ADB block: an 8-byte header, then deduplicated values."""

    def __init__(self):
        self.buf = bytearray(8)
        self.seen = {}

    def _put(self, data, align, dedup=True):
        if dedup:
            offs = self.seen.get(data)
            if offs is not None and offs % align == 0:
                return offs
        self.buf += bytes(-len(self.buf) % align)
        offs = len(self.buf)
        if offs > 0x0FFFFFFF:
            raise FormatError("ADB block over 256 MiB")
        self.buf += data
        if dedup:
            self.seen[data] = offs
        return offs

    def blob(self, data, dedup=True):
        if isinstance(data, str):
            data = data.encode()
        n = len(data)
        if n == 0:
            return NULL
        if n <= 0xFF:
            return (T_BLOB8 << 28) | self._put(struct.pack("<B", n) + data, 1, dedup)
        if n <= 0xFFFF:
            return (T_BLOB16 << 28) | self._put(struct.pack("<H", n) + data, 2, dedup)
        return (T_BLOB32 << 28) | self._put(struct.pack("<I", n) + data, 4, dedup)

    def int(self, n):
        if n < 0:
            raise FormatError("negative integer")
        if n < 0x10000000:
            return (T_INT << 28) | n
        if n < 1 << 32:
            return (T_INT32 << 28) | self._put(struct.pack("<I", n), 4)
        return (T_INT64 << 28) | self._put(struct.pack("<Q", n), 4)

    def obj(self, slots, kind=T_OBJECT):
        """SLOTS: values for slots 1..n (NULL where unset). Returns NULL when all are unset."""
        slots = list(slots)
        while slots and slots[-1] == NULL:
            slots.pop()
        if not slots:
            return NULL
        data = struct.pack(f"<{len(slots) + 1}I", len(slots) + 1, *slots)
        return (kind << 28) | self._put(data, 4)

    def fields(self, schema, values):
        """An object of SCHEMA from {field: value} (values already written)."""
        slots = [NULL] * len(FIELDS[schema])
        for k, v in values.items():
            slots[slot(schema, k) - 1] = v
        return self.obj(slots)

    def array(self, values):
        # Arrays are tagged as objects: the wire form is the same, readers take either tag,
        # and this is the tag `apk mkpkg` writes for arrays held in an object field.
        return self.obj([v for v in values if v != NULL], T_OBJECT)


def parse_dependency(w, text):
    """'name', 'name>=1.0', '!name' -> a dependency object."""
    conflict = text.startswith("!")
    if conflict:
        text = text[1:]
    for op in ("<=", ">=", "<", ">", "=", "~"):
        i = text.find(op)
        if i > 0:
            name, version, match = text[:i], text[i + len(op):], DEP_OPS[op]
            break
    else:
        name, version, match = text, "", DEP_ANY
    if conflict:
        match |= DEP_CONFLICT
    if not name or (version and not VERSION_RE.fullmatch(version)):
        raise FormatError(f"bad dependency {text!r}")
    fields = {"name": w.blob(name)}
    if match != DEP_ANY:
        fields["version"] = w.blob(version)
        if match != DEP_EQUAL:
            fields["match"] = w.int(match)
    return w.fields("dependency", fields)


# apk's version syntax: number{.number}...{letter}{_suffix{number}}...{~hash}{-r#}
VERSION_RE = re.compile(r"[0-9]+(\.[0-9]+)*[a-z]?"
                        r"(_(alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-9]*)*(~[0-9a-f]+)?(-r[0-9]+)?")


def valid_name(name):
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")
    return bool(name) and name[0].isalnum() and set(name) <= ok


def scan_tree(root):
    """[(dir relative path, dir mode, [(name, lstat, full path)])] sorted as apk wants."""
    dirs = []
    for here, subdirs, files in os.walk(root):
        rel = os.path.relpath(here, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        entries = []
        for name in files + [d for d in subdirs if os.path.islink(os.path.join(here, d))]:
            full = os.path.join(here, name)
            st = os.lstat(full)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise FormatError(f"{full}: only regular files, symlinks and directories are packaged")
            entries.append((name.encode(), st, full))
        entries.sort(key=lambda e: e[0])
        dirs.append((rel.encode(), stat.S_IMODE(os.lstat(here).st_mode), entries))
    dirs.sort(key=lambda d: d[0])
    return dirs


def build(files_dir, info, scripts=None, mtime=None, compress=True, triggers=()):
    """The bytes of an apk v3 package of the tree FILES_DIR.

    INFO: {pkginfo field: string}, e.g. name, version, arch, description, license, origin,
    url, maintainer, depends (space separated), provides. SCRIPTS: {script type: bytes}.
    """
    if mtime is None:
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH") or 0)
    scripts = scripts or {}
    for k in ("name", "version"):
        if not info.get(k):
            raise FormatError(f"info field {k} is required")
    if not valid_name(info["name"]):
        raise FormatError(f"bad package name {info['name']!r}")
    if not VERSION_RE.fullmatch(info["version"]):
        raise FormatError(f"bad package version {info['version']!r} (apk wants e.g. 1.2.3-r1)")
    w = AdbWriter()

    pkginfo = {}
    for field, kind in FIELDS["pkginfo"]:
        value = info.get(field)
        if value is None or value == "" or field in ("hashes", "installed-size", "file-size"):
            continue
        if kind == "[dependency]":
            deps = sorted(set(value.replace(",", " ").split()))
            pkginfo[field] = w.array(parse_dependency(w, d) for d in deps)
        elif kind == "[str]":
            pkginfo[field] = w.array(w.blob(t) for t in value.split())
        elif kind == "int":
            pkginfo[field] = w.int(int(value))
        elif kind == "hex":
            pkginfo[field] = w.blob(bytes.fromhex(value))
        else:
            pkginfo[field] = w.blob(value)

    tree = scan_tree(files_dir)
    installed_size = 0
    paths, data = [], []
    for dir_idx, (dname, dmode, entries) in enumerate(tree, 1):
        files = []
        for file_idx, (name, st, full) in enumerate(entries, 1):
            f = {"name": w.blob(name)}
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(full).encode()
                f["target"] = w.blob(struct.pack("<H", stat.S_IFLNK) + target)
                size = len(target)
            else:
                with open(full, "rb") as fh:
                    content = fh.read()
                size = len(content)
                installed_size += size
                f["hash"] = w.blob(hashlib.sha256(content).digest())
                if size:
                    data.append((dir_idx, file_idx, content))
            f["mtime"] = w.int(mtime)
            f["size"] = w.int(size)
            f["acl"] = w.fields("acl", {"mode": w.int(stat.S_IMODE(st.st_mode)),
                                        "user": w.blob("root"), "group": w.blob("root")})
            files.append(w.fields("file", f))
        name = w.blob(dname)
        acl = w.fields("acl", {"mode": w.int(dmode), "user": w.blob("root"),
                               "group": w.blob("root")})
        paths.append(w.fields("dir", {"name": name, "acl": acl, "files": w.array(files)}))

    if installed_size == 0 and (tree or scripts):
        installed_size = 1
    pkginfo["installed-size"] = w.int(installed_size)
    # The unique id: the first 20 bytes of the sha256 of the ADB block, computed with these
    # bytes zero; written undeduplicated so it has its own place to be filled in.
    uid = w.blob(bytes(20), dedup=False)
    uid_at = (uid & 0x0FFFFFFF) + 1
    pkginfo["hashes"] = uid

    pkg = {"info": w.fields("pkginfo", pkginfo), "paths": w.array(paths)}
    if scripts:
        order = [name for name, _ in FIELDS["scripts"]]
        pkg["scripts"] = w.fields("scripts", {k: w.blob(scripts[k]) for k in sorted(scripts, key=order.index)})
    if triggers:
        pkg["triggers"] = w.array(w.blob(t) for t in triggers)
    root = w.fields("package", pkg)
    struct.pack_into("<BBHI", w.buf, 0, 0, 0, 0, root)
    w.buf[uid_at:uid_at + 20] = hashlib.sha256(w.buf).digest()[:20]

    out = [MAGIC, struct.pack("<I", SCHEMA_PACKAGE), block(B_ADB, bytes(w.buf))]
    for dir_idx, file_idx, content in data:
        out.append(block(B_DATA, struct.pack("<II", dir_idx, file_idx) + content))
    raw = b"".join(out)
    if not compress:
        return raw
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 8)
    return b"ADBd" + z.compress(raw) + z.flush()


def block(kind, payload):
    size = 4 + len(payload)
    if size > 0x3FFFFFFF:
        raise FormatError("block over 1 GiB")
    return struct.pack("<I", (kind << 30) | size) + payload + bytes(-size % 8)


# ---------------------------------------------------------------------------- reader


class Package:
    """A parsed apk v3 package: .schema, .compression, .meta (nested dicts, as `dump`
    prints), .files ([(path, meta, bytes or None)] in package order), .sig_blocks."""


def decompress(raw):
    if raw[:4] == MAGIC:
        return raw, "none"
    if raw[:4] == b"ADBd":
        return zlib.decompress(raw[4:], -15), "deflate"
    if raw[:4] == b"ADBc":
        alg, level = raw[4], raw[5]
        if alg == 0:
            return raw[6:], "none"
        if alg == 1:
            return zlib.decompress(raw[6:], -15), f"deflate:{level}"
        raise FormatError(f"compression algorithm {alg} (zstd?) is not supported here")
    raise FormatError(f"not an apk v3 (ADB) file: magic {raw[:4]!r}")


class AdbReader:
    def __init__(self, adb):
        self.adb = adb

    def _at(self, offs, n):
        if offs + n > len(self.adb):
            raise FormatError(f"value at {offs} (+{n}) runs past the ADB block ({len(self.adb)})")
        return self.adb[offs:offs + n]

    def int(self, v):
        t, x = v >> 28, v & 0x0FFFFFFF
        if v == NULL:
            return None
        if t == T_INT:
            return x
        if t == T_INT32:
            return struct.unpack("<I", self._at(x, 4))[0]
        if t == T_INT64:
            return struct.unpack("<Q", self._at(x, 8))[0]
        raise FormatError(f"value {v:#x} is not an integer")

    def blob(self, v):
        t, x = v >> 28, v & 0x0FFFFFFF
        if v == NULL:
            return None
        width = {T_BLOB8: 1, T_BLOB16: 2, T_BLOB32: 4}.get(t)
        if width is None:
            raise FormatError(f"value {v:#x} is not a blob")
        n = int.from_bytes(self._at(x, width), "little")
        return self._at(x + width, n)

    def slots(self, v):
        """[value of slot 1, 2, ...] of an object or array."""
        t, x = v >> 28, v & 0x0FFFFFFF
        if v == NULL:
            return []
        if t not in (T_OBJECT, T_ARRAY) or x % 4:
            raise FormatError(f"value {v:#x} is not an (aligned) object or array")
        n = struct.unpack("<I", self._at(x, 4))[0]
        if n < 1:
            raise FormatError("object with no slot count")
        return list(struct.unpack(f"<{n}I", self._at(x, 4 * n)))[1:]

    def decode(self, v, kind):
        if kind.startswith("["):
            item = kind[1:-1]
            return [self.decode(s, item) for s in self.slots(v)]
        if kind in FIELDS:
            slots = self.slots(v)
            if len(slots) > len(FIELDS[kind]):
                raise FormatError(f"{kind} object has {len(slots)} slots, schema knows {len(FIELDS[kind])}")
            out = {}
            for (name, sub), s in zip(FIELDS[kind], slots):
                if s != NULL:
                    out[name] = self.decode(s, sub)
            return out
        if kind in ("int", "oct"):
            return self.int(v)
        b = self.blob(v)
        if kind == "hex":
            return b.hex()
        try:
            return b.decode()
        except UnicodeDecodeError:
            raise FormatError(f"string is not UTF-8: {b!r}")


def read(path_or_bytes, with_data=True):
    raw = path_or_bytes
    if not isinstance(raw, bytes):
        with open(path_or_bytes, "rb") as fh:
            raw = fh.read()
    data, compression = decompress(raw)
    if data[:4] != MAGIC:
        raise FormatError(f"no ADB. header after decompression ({data[:4]!r})")
    p = Package()
    p.compression = compression
    p.schema = struct.unpack_from("<I", data, 4)[0]
    if p.schema != SCHEMA_PACKAGE:
        raise FormatError(f"schema {p.schema:#x} is not a package ('pckg')")
    blocks, pos = [], 8
    while pos < len(data):
        if pos + 4 > len(data):
            raise FormatError("truncated block header")
        word = struct.unpack_from("<I", data, pos)[0]
        kind, size, hdr = word >> 30, word & 0x3FFFFFFF, 4
        if kind == B_EXT:
            kind, size, hdr = word & 0x3FFFFFFF, struct.unpack_from("<Q", data, pos + 8)[0], 16
        if size < hdr or pos + size > len(data):
            raise FormatError(f"block at {pos} has a bad size {size}")
        blocks.append((kind, data[pos + hdr:pos + size]))
        pos += size + (-size % 8)
    if pos != len(data):
        raise FormatError("padding of the last block is missing")
    kinds = [k for k, _ in blocks]
    if not kinds or kinds[0] != B_ADB:
        raise FormatError("the first block is not the ADB block")
    order_ok = all(a <= b for a, b in zip(kinds[1:], kinds[2:])) and B_ADB not in kinds[1:]
    if not order_ok or any(k > B_DATA for k in kinds):
        raise FormatError(f"blocks not ADB, SIG..., DATA... ({kinds})")
    adb = blocks[0][1]
    if len(adb) < 8:
        raise FormatError("ADB block too short")
    compat, version, _, root = struct.unpack_from("<BBHI", adb, 0)
    if compat != 0:
        raise FormatError(f"ADB compat version {compat} (only 0 exists)")
    p.adb_version = version
    p.adb = adb
    r = AdbReader(adb)
    p.meta = r.decode(root, "package")
    p.sig_blocks = kinds.count(B_SIG)

    # The unique id: sha256 of the ADB block with the id bytes zeroed, cut to the id length.
    info_slots = r.slots(r.slots(root)[0]) if r.slots(root) else []
    hs = slot("pkginfo", "hashes")
    p.uid_ok = None
    if len(info_slots) >= hs and info_slots[hs - 1] != NULL:
        v = info_slots[hs - 1]
        uid = r.blob(v)
        at = (v & 0x0FFFFFFF) + {T_BLOB8: 1, T_BLOB16: 2, T_BLOB32: 4}[v >> 28]
        zeroed = adb[:at] + bytes(len(uid)) + adb[at + len(uid):]
        p.uid_ok = hashlib.sha256(zeroed).digest()[:len(uid)] == uid

    # Files in package order; DATA blocks must come in that order, one per non-empty file.
    datas = [b for k, b in blocks if k == B_DATA]
    p.files, di = [], 0
    for i, d in enumerate(p.meta.get("paths", []), 1):
        for j, f in enumerate(d.get("files", []), 1):
            path = "/".join(x for x in (d.get("name", ""), f["name"]) if x)
            content = None
            if f.get("size") and "target" not in f:
                if di >= len(datas):
                    raise FormatError(f"no DATA block for {path}")
                b = datas[di]
                di += 1
                idx = struct.unpack_from("<II", b, 0)
                if idx != (i, j):
                    raise FormatError(f"DATA block {di} is for {idx}, expected {(i, j)} ({path})")
                content = b[8:]
                if len(content) != f["size"]:
                    raise FormatError(f"{path}: {len(content)} bytes of data, size says {f['size']}")
            elif "target" not in f and not f.get("size"):
                content = b""
            if content is not None:
                want = f.get("hash")
                if want is None:
                    raise FormatError(f"{path}: regular file without a hash")
                algo = {32: hashlib.sha256, 64: hashlib.sha512, 20: hashlib.sha1, 16: hashlib.md5}.get(len(want) // 2)
                if algo is None or algo(content).hexdigest() != want:
                    raise FormatError(f"{path}: content does not match its hash")
            p.files.append((path, f, content if with_data else None))
    if di != len(datas):
        raise FormatError(f"{len(datas) - di} DATA block(s) left over")
    return p


def extract(pkg, dest):
    """Unpack a read() package under DEST with the recorded modes (owners are not set)."""
    for d in pkg.meta.get("paths", []):
        path = os.path.join(dest, d.get("name", ""))
        os.makedirs(path, exist_ok=True)
    for path, f, content in pkg.files:
        full = os.path.join(dest, path)
        if "target" in f:
            t = bytes.fromhex(f["target"])
            if struct.unpack_from("<H", t)[0] == stat.S_IFLNK:
                os.symlink(t[2:].decode(), full)
            continue
        with open(full, "wb") as out:
            out.write(content)
        os.chmod(full, f.get("acl", {}).get("mode", 0o644))
    for d in pkg.meta.get("paths", []):
        os.chmod(os.path.join(dest, d.get("name", "")), d.get("acl", {}).get("mode", 0o755))


# ---------------------------------------------------------------------------- command line


def main(argv):
    if len(argv) >= 2 and argv[1] == "build":
        info, scripts, triggers = {}, {}, []
        files_dir = output = None
        mtime, compress = None, True
        args = argv[2:]
        while args:
            opt = args.pop(0)
            if opt == "--no-compress":
                compress = False
                continue
            if not args:
                raise SystemExit(f"apkv3.py: {opt} needs a value")
            val = args.pop(0)
            if opt in ("--info", "-I"):
                k, sep, v = val.partition(":")
                if not sep or k not in dict(FIELDS["pkginfo"]):
                    raise SystemExit(f"apkv3.py: bad --info {val!r}")
                info[k] = v
            elif opt in ("--script", "-s"):
                k, sep, v = val.partition(":")
                if not sep or k not in dict(FIELDS["scripts"]):
                    raise SystemExit(f"apkv3.py: bad --script {val!r}")
                with open(v, "rb") as fh:
                    scripts[k] = fh.read()
            elif opt in ("--trigger", "-t"):
                triggers.append(val)
            elif opt in ("--files", "-F"):
                files_dir = val
            elif opt in ("--output", "-o"):
                output = val
            elif opt == "--mtime":
                mtime = int(val)
            else:
                raise SystemExit(f"apkv3.py: unknown option {opt}")
        if not files_dir or not output:
            raise SystemExit("apkv3.py build: --files and --output are required")
        pkg = build(files_dir, info, scripts, mtime, compress, triggers)
        tmp = output + ".tmp"
        with open(tmp, "wb") as f:
            f.write(pkg)
        os.replace(tmp, output)
        return 0
    if len(argv) == 3 and argv[1] == "dump":
        p = read(argv[2], with_data=False)
        out = {"compression": p.compression, "schema": "pckg", "adb-version": p.adb_version,
               "signatures": p.sig_blocks, "unique-id-ok": p.uid_ok}
        out.update(p.meta)
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    if len(argv) == 4 and argv[1] == "extract":
        extract(read(argv[2]), argv[3])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except FormatError as e:
        print(f"apkv3.py: {e}", file=sys.stderr)
        sys.exit(1)
