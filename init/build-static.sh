#!/usr/bin/env bash
# Builds auraed as one static binary into $1/auraed and says which libc it used:
# x86_64-unknown-linux-musl when that target can be installed, else static glibc.
#   init/build-static.sh OUT_DIR [FEATURES]   (FEATURES: e.g. `bench`, for the bench layer)
set -euo pipefail
out=${1:?usage: build-static.sh OUT_DIR [FEATURES]}
features=${2:-}
mkdir -p "$out"
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
   || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
    target=x86_64-unknown-linux-musl; flags=""; libc=musl
else
    echo "auraed: musl target unavailable; falling back to static glibc" >&2
    target=x86_64-unknown-linux-gnu; flags="-C target-feature=+crt-static"; libc=glibc
fi
RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo build --quiet --release --locked --target "$target" -p auraed \
    ${features:+--features "$features"}
cp "${CARGO_TARGET_DIR:-target}/$target/release/auraed" "$out/auraed.tmp" && mv "$out/auraed.tmp" "$out/auraed"
ln -sf auraed "$out/aer"
echo "$libc" > "$out/auraed.libc"
if readelf -lW "$out/auraed" | grep -q 'Requesting program interpreter'; then
    echo "auraed: $out/auraed is dynamically linked; it must be static" >&2; exit 1
fi
echo "auraed: static ($libc, $target), $(stat -c %s "$out/auraed") bytes"
