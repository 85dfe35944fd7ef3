#!/usr/bin/env python3
"""Builds the OCI image archives criguard's end-to-end tests import into containerd, offline:

  pause    registry.k8s.io/pause:3.6 (containerd 1.6's default sandbox image) and :3.9,
           from the static pause binary built from pause.c;
  busybox  docker.io/library/busybox:1.36 and registry.k8s.io/e2e-test-images/busybox:1.29-4,
           from Debian's dynamically linked busybox with hard-linked applets and its libraries.

Debian's busybox-static runs applets in-process and a symlinked applet makes runc mask the
busybox binary itself, so the dynamic build with hard links is used.

Layers are deterministic (fixed mtimes, sorted entries), so a rebuild gives the same digests.

Usage: images.py --pause PAUSE_BIN --busybox BUSYBOX_BIN --out DIR
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile

EPOCH = 946684800
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def add_dir(tf, path, mode=0o755):
    ti = tarfile.TarInfo(path)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, EPOCH
    tf.addfile(ti)


def add_file(tf, path, data, mode=0o644):
    if isinstance(data, str):
        data = data.encode()
    ti = tarfile.TarInfo(path)
    ti.size, ti.mode, ti.mtime = len(data), mode, EPOCH
    tf.addfile(ti, io.BytesIO(data))


def add_hardlink(tf, path, target):
    ti = tarfile.TarInfo(path)
    ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.LNKTYPE, target, 0o755, EPOCH
    tf.addfile(ti)


def layer(build):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        build(tf)
    raw = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(raw)
    return gz.getvalue(), "sha256:" + hashlib.sha256(raw).hexdigest()


def libraries(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        for word in line.split():
            if word.startswith("/"):
                libs.append(word)
    return sorted(set(libs))


def pause_layer(pause):
    with open(pause, "rb") as f:
        data = f.read()
    return layer(lambda tf: add_file(tf, "pause", data, 0o755))


def busybox_layer(busybox):
    applets = subprocess.run([busybox, "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()

    def build(tf):
        dirs = ["bin", "dev", "etc", "home", "proc", "root", "sbin", "sys", "tmp", "usr",
                "usr/bin", "usr/sbin", "var"]
        for lib in libraries(busybox):
            parts = lib.strip("/").split("/")[:-1]
            dirs += ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        for d in sorted(set(dirs)):
            add_dir(tf, d, 0o1777 if d == "tmp" else 0o755)
        with open(busybox, "rb") as f:
            add_file(tf, "bin/busybox", f.read(), 0o755)
        for lib in libraries(busybox):
            with open(os.path.realpath(lib), "rb") as f:
                add_file(tf, lib.strip("/"), f.read(), 0o755)
        add_file(tf, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
        add_file(tf, "etc/group", "root:x:0:\nnogroup:x:65534:\n")
        for applet in sorted(set(a.strip("/") for a in applets)):
            if applet and applet != "bin/busybox":
                add_hardlink(tf, applet, "bin/busybox")

    return layer(build)


def write_image(out, slug, refs, layers, config):
    layout = os.path.join(out, slug)
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def blob(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return "sha256:" + digest

    descriptors = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blob(gz), "size": len(gz)} for gz, _ in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}},
                     sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": blob(cfg), "size": len(cfg)},
                           "layers": descriptors}, sort_keys=True).encode()
    mdigest = blob(manifest)
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest,
         "size": len(manifest), "platform": {"architecture": "amd64", "os": "linux"},
         "annotations": {"io.containerd.image.name": ref,
                         "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}}
        for ref in refs]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    archive = layout + ".tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        for root, dirs, files in os.walk(layout):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                ti = tf.gettarinfo(full, os.path.relpath(full, layout))
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = EPOCH, 0, 0, "", ""
                with open(full, "rb") as f:
                    tf.addfile(ti, f)
    print(f"{slug}: {mdigest} {' '.join(refs)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pause", required=True)
    ap.add_argument("--busybox", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    write_image(args.out, "pause", ["registry.k8s.io/pause:3.6", "registry.k8s.io/pause:3.9"],
                [pause_layer(args.pause)], {"Entrypoint": ["/pause"], "User": "65535:65535"})
    write_image(args.out, "busybox", ["docker.io/library/busybox:1.36",
                                      "registry.k8s.io/e2e-test-images/busybox:1.29-4"],
                [busybox_layer(args.busybox)], {"Env": [PATH_ENV], "Cmd": ["sh"]})


if __name__ == "__main__":
    main()
