#!/usr/bin/env python3
"""A hostile OCI registry for `make bench`'s soak (tests/bench.sh, part `soak`).

    tests/soak/registry.py PORT

Serves plain HTTP on 127.0.0.1:PORT (the guest reaches it through a QEMU guestfwd rule).
Every repository is one attack; its manifests answer for any tag:

  endless    a manifest that never ends (chunked)          -> cut at the 4 MiB cap
  bigerror   a 404 whose error body never ends               -> cut at 64 KiB / 300 chars
  drip       a manifest sent one byte every 2 s              -> ends with its caller
  realm      a bearer challenge whose realm is link-local    -> refused, no token fetched
  redirect   a redirect to the node's own API on loopback    -> refused
  pax        a layer whose PAX header declares 16 GiB        -> refused at the header cap
  deep       a layer 600 directories deep                    -> refused at the depth cap
  bomb       a gzip layer of 2 GiB of zeros (~2 MiB)          -> refused at the store's free space
  wrongdiff  a good layer under a wrong diff ID              -> refused, digest mismatch

Blobs are real (their digests are right), so the layers reach the unpacker. It runs
until killed; every connection on a thread of its own.
"""
import gzip
import hashlib
import http.server
import io
import json
import sys
import tarfile
import time

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def pax_16g():
    """A tar whose first header is a PAX extended header of 16 GiB (base-256 size)."""
    h = bytearray(512)
    h[0:14] = b"././@PaxHeader"
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"\x80" + (16 << 30).to_bytes(11, "big")
    h[136:148] = b"00000000000\0"
    h[156:157] = b"x"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + b"a" * (1 << 20)


def tar_of(add):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        add(t)
    return buf.getvalue()


def deep():
    def add(t):
        for i in range(1, 601):
            d = tarfile.TarInfo("a/" * i)
            d.type = tarfile.DIRTYPE
            d.mode = 0o755
            t.addfile(d)
    return tar_of(add)


def small():
    def add(t):
        f = tarfile.TarInfo("hello")
        f.size = 6
        t.addfile(f, io.BytesIO(b"hello\n"))
    return tar_of(add)


def bomb():
    """gzip(tar of one file of 2 GiB of zeros), built without holding the tar; and the
    tar's digest (its diff ID)."""
    size = 2 << 30
    h = hashlib.sha256()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as z:
        info = tarfile.TarInfo("zero")
        info.size = size
        head = info.tobuf(format=tarfile.PAX_FORMAT)
        z.write(head)
        h.update(head)
        chunk = b"\0" * (1 << 20)
        for _ in range(size >> 20):
            z.write(chunk)
            h.update(chunk)
        tail = b"\0" * 1024
        z.write(tail)
        h.update(tail)
    return out.getvalue(), "sha256:" + h.hexdigest()


BLOBS = {}
MANIFESTS = {}


def image(repo, tar, gz=None, diff_id=None):
    """Registers repo's manifest, config and one layer (tar, gzipped unless gz given)."""
    layer = gz if gz is not None else gzip.compress(tar, mtime=0)
    diff_id = diff_id or digest(tar)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(layer), "size": len(layer)}],
    }).encode()
    BLOBS[digest(config)] = config
    BLOBS[digest(layer)] = layer
    MANIFESTS[repo] = manifest


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def endless(self, code, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        piece = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        while True:
            self.wfile.write(piece)

    def do_GET(self):
        try:
            self.route()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def route(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["v2"]:
            return self.send(200, b"{}")
        if len(parts) < 4 or parts[0] != "v2":
            return self.send(404)
        repo, kind, ref = "/".join(parts[1:-2]), parts[-2], parts[-1]
        attack = repo.split("/")[-1]
        if kind == "blobs":
            b = BLOBS.get(ref)
            return self.send(200, b) if b is not None else self.send(404)
        if attack == "endless":
            return self.endless(200, OCI_MANIFEST)
        if attack == "bigerror":
            return self.endless(404, "application/json")
        if attack == "drip":
            self.send_response(200)
            self.send_header("Content-Type", OCI_MANIFEST)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            while True:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(2)
        if attack == "realm":
            return self.send(401, headers=[("WWW-Authenticate",
                             'Bearer realm="http://169.254.169.254/token",service="soak"')])
        if attack == "redirect":
            return self.send(307, headers=[("Location", "http://127.0.0.1:8443/v2/x/manifests/y")])
        m = MANIFESTS.get(attack)
        if m is None:
            return self.send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no such attack"}]}')
        return self.send(200, m, [("Content-Type", OCI_MANIFEST), ("Docker-Content-Digest", digest(m))])


def main():
    port = int(sys.argv[1])
    image("pax", pax_16g())
    image("deep", deep())
    gz, diff = bomb()
    image("bomb", None, gz=gz, diff_id=diff)
    image("wrongdiff", small(), diff_id="sha256:" + "0" * 64)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    print(f"hostile registry on 127.0.0.1:{port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
