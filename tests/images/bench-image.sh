#!/bin/bash
# Builds the pull benchmark's image offline: ~64 MiB in 4 layers of random bytes (so gzip
# cannot shrink them and the figure is the transfer and unpack, not the compression).
#   tests/images/bench-image.sh OUT   -> OUT/layout (OCI layout) with tag big
# Cached by the content of this script (OUT/.stamp).
set -euo pipefail
out=$(realpath -m "$1")
stamp=$(sha256sum < "$0" | cut -c1-16)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ]; then
    exit 0
fi
command -v umoci >/dev/null || { echo "bench-image: umoci missing (make deps)" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out"
cd "$out"
umoci init --layout layout
umoci new --image layout:big
for i in 1 2 3 4; do
    mkdir -p "l$i/data"
    head -c $((16 << 20)) /dev/urandom > "l$i/data/blob$i"
    tar -C "l$i" -cf "l$i.tar" data
    umoci raw add-layer --image layout:big "l$i.tar"
    rm -rf "l$i" "l$i.tar"
done
umoci gc --layout layout
echo "$stamp" > .stamp
echo "bench-image: $(du -sh layout | cut -f1) in $out/layout"
