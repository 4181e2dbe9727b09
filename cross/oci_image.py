#!/usr/bin/env python3
"""Write an OCI image layout for edgepass without Docker (python3 stdlib only).

  oci_image.py [--tag TAG] [--ca FILE | --no-ca] OUTDIR TRIPLE=BINARY...

One image per binary. OUTDIR/index.json names a multi-platform image index TAG (default
"latest"), so `skopeo inspect oci:OUTDIR:TAG` picks the host's platform and
`--override-arch` the others; each image is also named TAG-ARCH[VARIANT] (latest-amd64,
latest-armv7, ...) for tools that take one manifest. Each image has one layer, the same as the Dockerfile's
FROM scratch image: /edgepass and /etc/ssl/certs/ca-certificates.crt (for tls=2 clients
that pass ca=/etc/ssl/certs/ca-certificates.crt), owned by root, with one fixed mtime.
The image runs as nobody (65534) with /edgepass as its entrypoint.
"""

import datetime
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

CA_DEFAULT = "/etc/ssl/certs/ca-certificates.crt"
CA_PATH = "etc/ssl/certs/ca-certificates.crt"

# OCI platform (architecture, variant) of each Rust target.
PLATFORMS = {
    "x86_64-unknown-linux-musl": ("amd64", None),
    "aarch64-unknown-linux-musl": ("arm64", "v8"),
    "armv7-unknown-linux-musleabihf": ("arm", "v7"),
    "arm-unknown-linux-musleabi": ("arm", "v6"),
    "mipsel-unknown-linux-musl": ("mipsle", None),
    "mips-unknown-linux-musl": ("mips", None),
}


def epoch():
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def add(tar, name, data=None, mode=0o644, directory=False):
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = epoch()
    info.mode = mode
    if directory:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def layer(binary, ca):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "edgepass", binary, 0o755)
        if ca is not None:
            for d in ("etc", "etc/ssl", "etc/ssl/certs"):
                add(tar, d, mode=0o755, directory=True)
            add(tar, CA_PATH, ca, 0o644)
    raw = buf.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as f:
        f.write(raw)
    return raw, gz.getvalue()


def blob(outdir, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(outdir, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def dumps(obj):
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


def image(outdir, triple, binary, ca):
    arch, variant = PLATFORMS[triple]
    raw, gz = layer(binary, ca)
    layer_desc = blob(outdir, gz)
    layer_desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    created = datetime.datetime.fromtimestamp(epoch(), datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")
    platform = {"architecture": arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    config = dict(platform)
    config.update({
        "created": created,
        "config": {
            "Entrypoint": ["/edgepass"],
            "Cmd": ["--help"],
            "User": "65534:65534",
            "Env": ["PATH=/"],
            "Labels": {"org.opencontainers.image.title": "edgepass",
                       "org.opencontainers.image.description":
                           "Tiny TCP/UDP tunnel and relay (static musl binary)"},
        },
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": created, "created_by": "cross/oci-image.sh"}],
    })
    config_desc = blob(outdir, dumps(config))
    config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    desc = blob(outdir, dumps(manifest))
    desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    desc["platform"] = platform
    return desc


def main(argv):
    tag, ca_file, args = "latest", CA_DEFAULT, []
    it = iter(argv[1:])
    for a in it:
        if a == "--tag":
            tag = next(it)
        elif a == "--ca":
            ca_file = next(it)
        elif a == "--no-ca":
            ca_file = None
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            args.append(a)
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    outdir, pairs = args[0], args[1:]
    ca = None
    if ca_file is not None:
        with open(ca_file, "rb") as f:
            ca = f.read()
    os.makedirs(os.path.join(outdir, "blobs", "sha256"), exist_ok=True)
    manifests = []
    for pair in pairs:
        triple, _, path = pair.partition("=")
        if triple not in PLATFORMS or not path:
            print(f"expected TRIPLE=BINARY with TRIPLE one of {', '.join(PLATFORMS)}: {pair}",
                  file=sys.stderr)
            return 2
        with open(path, "rb") as f:
            desc = image(outdir, triple, f.read(), ca)
        manifests.append(desc)
        print(f"{triple}: manifest {desc['digest']}")
    multi = blob(outdir, dumps({"schemaVersion": 2,
                                "mediaType": "application/vnd.oci.image.index.v1+json",
                                "manifests": manifests}))
    multi["mediaType"] = "application/vnd.oci.image.index.v1+json"
    multi["annotations"] = {"org.opencontainers.image.ref.name": tag}
    top = [multi]
    for desc in manifests:
        p = desc["platform"]
        one = {k: v for k, v in desc.items() if k != "platform"}
        one["annotations"] = {"org.opencontainers.image.ref.name":
                              f"{tag}-{p['architecture']}{p.get('variant', '')}"}
        top.append(one)
    with open(os.path.join(outdir, "oci-layout"), "wb") as f:
        f.write(dumps({"imageLayoutVersion": "1.0.0"}))
    with open(os.path.join(outdir, "index.json"), "wb") as f:
        f.write(dumps({"schemaVersion": 2,
                       "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": top}))
    print(f"{outdir}: image index {multi['digest']} as {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
