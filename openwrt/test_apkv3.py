#!/usr/bin/env python3
"""Round trip of openwrt/apkv3.py: build packages, read them back, break them.

  python3 openwrt/test_apkv3.py        (check-package.sh runs it before reading any .apk)
"""

import os
import stat
import struct
import sys
import tempfile
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import apkv3  # noqa: E402

INFO = {"name": "demo", "version": "1.2.3_rc1-r4", "arch": "mipsel_24kc",
        "description": "round trip", "license": "MIT", "origin": "demo",
        "depends": "libc foo>=1.0 !bar", "url": "https://example.org/"}


class RoundTrip(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        root = self.root = os.path.join(self.tmp.name, "root")
        os.makedirs(os.path.join(root, "usr/bin"))
        os.makedirs(os.path.join(root, "etc/empty"))
        self.content = {
            "usr/bin/tool": (os.urandom(70000), 0o755),     # over 64 KiB
            "etc/small": (b"x" * 300, 0o600),
            "etc/zero": (b"", 0o644),                       # empty: no DATA block
        }
        for path, (data, mode) in self.content.items():
            full = os.path.join(root, path)
            with open(full, "wb") as f:
                f.write(data)
            os.chmod(full, mode)
        os.symlink("tool", os.path.join(root, "usr/bin/link"))
        self.scripts = {"post-install": b"#!/bin/sh\necho hi\n", "pre-deinstall": b"#!/bin/sh\n" + b"#" * 400}

    def tearDown(self):
        self.tmp.cleanup()

    def build(self, **kw):
        return apkv3.build(self.root, dict(INFO), self.scripts, mtime=1700000000, **kw)

    def test_round_trip(self):
        for compress in (True, False):
            raw = self.build(compress=compress)
            self.assertEqual(raw[:4], b"ADBd" if compress else b"ADB.")
            p = apkv3.read(raw)
            self.assertTrue(p.uid_ok)
            info = p.meta["info"]
            for k in ("name", "version", "arch", "description", "license", "origin", "url"):
                self.assertEqual(info[k], INFO[k])
            self.assertEqual(info["depends"], [
                {"name": "bar", "match": 7 | 16},
                {"name": "foo", "version": "1.0", "match": 5},
                {"name": "libc"}])
            self.assertEqual(info["installed-size"], 70300)
            files = {path: (f, c) for path, f, c in p.files}
            self.assertEqual(sorted(files), ["etc/small", "etc/zero", "usr/bin/link", "usr/bin/tool"])
            for path, (data, mode) in self.content.items():
                f, c = files[path]
                self.assertEqual(c, data)
                self.assertEqual(f["acl"], {"mode": mode, "user": "root", "group": "root"})
                self.assertEqual(f["mtime"], 1700000000)
            link = bytes.fromhex(files["usr/bin/link"][0]["target"])
            self.assertEqual(link, struct.pack("<H", stat.S_IFLNK) + b"tool")
            self.assertEqual([d.get("name", "") for d in p.meta["paths"]],
                             ["", "etc", "etc/empty", "usr", "usr/bin"])
            self.assertEqual({k: v.encode() for k, v in p.meta["scripts"].items()}, self.scripts)

    def test_deterministic(self):
        self.assertEqual(self.build(), self.build())

    def test_extract(self):
        p = apkv3.read(self.build())
        dest = os.path.join(self.tmp.name, "out")
        apkv3.extract(p, dest)
        for path, (data, mode) in self.content.items():
            full = os.path.join(dest, path)
            self.assertEqual(open(full, "rb").read(), data)
            self.assertEqual(stat.S_IMODE(os.stat(full).st_mode), mode)
        self.assertEqual(os.readlink(os.path.join(dest, "usr/bin/link")), "tool")

    def test_corruption_is_caught(self):
        raw = bytearray(self.build(compress=False))
        at = raw.find(self.content["etc/small"][0])
        raw[at] ^= 1
        with self.assertRaisesRegex(apkv3.FormatError, "does not match its hash"):
            apkv3.read(bytes(raw))
        with self.assertRaisesRegex(apkv3.FormatError, "not an apk v3"):
            apkv3.read(b"\x1f\x8b" + bytes(100))
        truncated = self.build(compress=False)[:-64]
        with self.assertRaises(apkv3.FormatError):
            apkv3.read(truncated)
        # a DATA block for the wrong file
        raw = bytearray(self.build(compress=False))
        first = raw.find(struct.pack("<II", 2, 1))
        raw[first:first + 8] = struct.pack("<II", 2, 2)
        with self.assertRaisesRegex(apkv3.FormatError, "DATA block"):
            apkv3.read(bytes(raw))

    def test_rejects_bad_info(self):
        for k, v in (("name", "-bad"), ("version", "1.0-1"), ("name", "")):
            with self.assertRaises(apkv3.FormatError):
                apkv3.build(self.root, dict(INFO, **{k: v}), mtime=0)

    def test_compressed_is_raw_deflate_of_uncompressed(self):
        raw = self.build()
        self.assertEqual(zlib.decompress(raw[4:], -15), self.build(compress=False))


if __name__ == "__main__":
    unittest.main()
