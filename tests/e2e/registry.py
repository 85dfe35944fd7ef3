#!/usr/bin/env python3
"""A minimal, read-only OCI registry for criguard's end-to-end tests, stdlib only.

Serves one OCI image layout (as written by images.py) as REPO:TAG over plain HTTP, and answers
every request without the right Basic credentials with 401 and a Basic challenge, so that
containerd pulls only with the credentials the CRI PullImage request carried. Each request is
logged with the user name it authenticated as (never the password).

Usage: registry.py --layout DIR --listen 127.0.0.1:5055 --repo NAME --tag TAG
                   --user USER --password PASSWORD --log FILE
"""

import argparse
import base64
import hashlib
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    p = argparse.ArgumentParser()
    for flag in ("--layout", "--listen", "--repo", "--tag", "--user", "--password", "--log"):
        p.add_argument(flag, required=True)
    args = p.parse_args()

    blobs = os.path.join(args.layout, "blobs", "sha256")
    with open(os.path.join(args.layout, "index.json")) as f:
        manifest_digest = json.load(f)["manifests"][0]["digest"]
    with open(os.path.join(blobs, manifest_digest.split(":", 1)[1]), "rb") as f:
        manifest = f.read()
    media_type = json.loads(manifest)["mediaType"]
    expected = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    log = open(args.log, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def reply(self, code, body=b"", headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def handle_any(self):
            authorized = self.headers.get("Authorization") == expected
            log.write(f"{self.command} {self.path} {'user=' + args.user if authorized else 'unauthorized'}\n")
            if not authorized:
                return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', [
                    ("WWW-Authenticate", 'Basic realm="criguard-e2e"'),
                    ("Content-Type", "application/json")])
            prefix = f"/v2/{args.repo}/"
            if self.path == "/v2/":
                return self.reply(200, b"{}", [("Content-Type", "application/json")])
            if self.path in (prefix + "manifests/" + args.tag, prefix + "manifests/" + manifest_digest):
                return self.reply(200, manifest, [("Content-Type", media_type),
                                                  ("Docker-Content-Digest", manifest_digest)])
            if self.path.startswith(prefix + "blobs/sha256:"):
                digest = self.path.rsplit(":", 1)[1]
                path = os.path.join(blobs, digest)
                if len(digest) == 64 and os.path.exists(path):
                    with open(path, "rb") as f:
                        data = f.read()
                    assert hashlib.sha256(data).hexdigest() == digest
                    return self.reply(200, data, [("Content-Type", "application/octet-stream"),
                                                  ("Docker-Content-Digest", "sha256:" + digest)])
            self.reply(404, b'{"errors":[{"code":"NOT_FOUND"}]}', [("Content-Type", "application/json")])

        do_GET = handle_any
        do_HEAD = handle_any

    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"registry serving {args.repo}:{args.tag} on {args.listen}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
