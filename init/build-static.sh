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
    # RELR (DT_RELR) packs the static-pie binary's ~15,000 relative relocations into a
    # bitmap: each process (auraed, every VMM and cell holder) otherwise reads 360 KB of
    # relocation entries at start, and they stay resident. Rust's own musl (1.2.5)
    # applies RELR at start; GNU ld 2.38+ writes it.
    target=x86_64-unknown-linux-musl; flags="-C link-arg=-Wl,-z,pack-relative-relocs"; libc=musl
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
