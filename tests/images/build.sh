#!/bin/bash
# Builds the test images offline into an OCI layout: umoci for the images, Debian's static
# busybox for their contents, python3's tarfile for layers no image tool would write.
#
#   tests/images/build.sh OUT      -> OUT/layout (OCI layout) with tags:
#     busybox     a shell image: entrypoint, cmd, env, workdir, user table, a marker file
#     layered     busybox + a layer that deletes a file (whiteout) and makes a directory
#                 opaque, + a layer writing through the absolute symlink lib -> /usr/lib
#     malicious   busybox + a layer with a '../' name
#
# Cached by the content of this script and of /bin/busybox (OUT/.stamp).
set -euo pipefail
out=$(realpath -m "$1")
here=$(cd "$(dirname "$0")" && pwd)
stamp=$(cat "$0" /bin/busybox | sha256sum | cut -c1-16)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ]; then
    exit 0
fi
for t in umoci python3; do
    command -v "$t" >/dev/null || { echo "images: $t missing (make deps)" >&2; exit 1; }
done
rm -rf "$out" && mkdir -p "$out"
cd "$out"
L=layout
umoci init --layout "$L"

# busybox: the base of all of them.
umoci new --image "$L:busybox"
umoci unpack --rootless --image "$L:busybox" b >/dev/null
r=b/rootfs
mkdir -p "$r/bin" "$r/etc" "$r/srv" "$r/tmp" "$r/usr/lib"
cp /bin/busybox "$r/bin/busybox"
for a in sh echo cat ls env pwd id true false sleep mkdir rm grep wc test stty tty httpd wget nc hostname head; do
    ln -s busybox "$r/bin/$a"
done
printf 'ID=aurae-test\nNAME="Aurae test image"\n' > "$r/etc/os-release"
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/srv:/bin/sh\n' > "$r/etc/passwd"
printf 'root:x:0:\napp:x:1000:\n' > "$r/etc/group"
echo "from the image" > "$r/srv/marker"
mkdir -p "$r/cache" && echo lower > "$r/cache/old-entry"
ln -s /usr/lib "$r/lib"
echo a > "$r/usr/lib/a.so"
umoci repack --image "$L:busybox" b >/dev/null
umoci config --image "$L:busybox" \
    --config.entrypoint /bin/sh --config.entrypoint -c \
    --config.cmd 'echo hello from $GREETING in $(pwd)' \
    --config.env PATH=/bin --config.env GREETING=image \
    --config.workingdir /srv --config.exposedports 8080/tcp
rm -rf b

# Layers no image tool writes: crafted tars, added as they are.
python3 - <<'PY'
import io, tarfile

def layer(path, entries):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data in entries:
            i = tarfile.TarInfo(name)
            i.mtime = 1700000000
            if kind == "dir":
                i.type, i.mode = tarfile.DIRTYPE, 0o755
                t.addfile(i)
            elif kind == "file":
                i.mode, i.size = 0o644, len(data)
                t.addfile(i, io.BytesIO(data))
            elif kind == "symlink":
                i.type, i.linkname = tarfile.SYMTYPE, data.decode()
                t.addfile(i)

layer("whiteouts.tar", [
    ("etc/.wh.os-release", "file", b""),
    ("cache/.wh..wh..opq", "file", b""),
    ("cache/new-entry", "file", b"upper\n"),
])
layer("through.tar", [("lib/b.so", "file", b"b\n")])
layer("escape.tar", [("../escaped", "file", b"x\n")])
# 8,000 empty files in 80 directories: a layer that takes seconds to unpack under TCG
# (images.rs cuts the power in the middle of it).
layer("many.tar", [(f"many/{d}", "dir", b"") for d in range(80)]
      + [(f"many/{i % 80}/f{i}", "file", b"") for i in range(8000)])
PY
for tag in layered malicious many; do umoci tag --image "$L:busybox" "$tag"; done
umoci raw add-layer --image "$L:layered" whiteouts.tar
umoci raw add-layer --image "$L:layered" through.tar
umoci raw add-layer --image "$L:malicious" escape.tar
umoci raw add-layer --image "$L:many" many.tar
rm -f whiteouts.tar through.tar escape.tar many.tar
umoci gc --layout "$L"
# busybox-zstd: busybox with its layer recompressed with zstd (skopeo 1.9 reuses the
# gzip blob instead of recompressing).
python3 - "$L" <<'PY'
import gzip, hashlib, json, os, subprocess, sys
L = sys.argv[1]
def blob(d): return os.path.join(L, "blobs", "sha256", d.split(":")[1])
def put(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    open(blob(d), "wb").write(data)
    return d, len(data)
index = json.load(open(os.path.join(L, "index.json")))
src = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "busybox")
man = json.load(open(blob(src["digest"])))
for l in man["layers"]:
    tar = gzip.decompress(open(blob(l["digest"]), "rb").read())
    z = subprocess.run(["zstd", "-q", "-c", "-3"], input=tar, capture_output=True, check=True).stdout
    l["digest"], l["size"] = put(z)
    l["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
d, n = put(json.dumps(man).encode())
index["manifests"].append({"mediaType": src["mediaType"], "digest": d, "size": n,
                           "annotations": {"org.opencontainers.image.ref.name": "busybox-zstd"}})
json.dump(index, open(os.path.join(L, "index.json"), "w"))
PY
echo "$stamp" > .stamp
echo "images: $(umoci ls --layout "$L" | tr '\n' ' ')in $out/$L"
