#!/usr/bin/env bash
# Build the pinned Aurae kernel: Debian's linux-source-6.1, `make tinyconfig` for x86_64,
# then kernel/aurae.config merged in allnoconfig mode (keeps the kernel minimal).
# FLAVOR `metal` (UEFI, real NICs and disks, a VGA/framebuffer console) merges
# kernel/metal.config on top of the same fragment; `minimal` (the default) is for QEMU,
# VMs and Spawn. Fails if any option of the fragments is missing from the final .config.
#
# Usage: build.sh OUT_DIR [minimal|metal]
# Output: $OUT/bzImage, $OUT/vmlinux, $OUT/config, $OUT/version.
# Cached by content hash under ${AURAE_CACHE:-~/.cache/aurae}/kernel/<hash>/:
# the hash covers this script, the fragments and the exact linux-source package version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: build.sh OUT_DIR [minimal|metal]}
FLAVOR=${2:-minimal}
case "$FLAVOR" in
    minimal) fragments=("$here/aurae.config") ;;
    metal) fragments=("$here/aurae.config" "$here/metal.config") ;;
    *) echo "kernel: unknown flavor '$FLAVOR' (minimal or metal)" >&2; exit 2 ;;
esac
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
CACHE=${AURAE_CACHE:-$HOME/.cache/aurae}/kernel
JOBS=${JOBS:-$(nproc)}

[ -f "$SRC_TAR" ] || { echo "kernel: $SRC_TAR missing (apt-get install linux-source-6.1)" >&2; exit 1; }
pkgver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { cat "$here/build.sh" "${fragments[@]}"; echo "linux-source-6.1 $pkgver"; } | sha256sum | cut -c1-16)
dest=$CACHE/$key
mkdir -p "$OUT"

if [ ! -f "$dest/bzImage" ]; then
    echo "kernel: building $FLAVOR (cache key $key, linux-source-6.1 $pkgver); ~10 min on 2 cores"
    work=$(mktemp -d "${TMPDIR:-/tmp}/aurae-kernel.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    tar -C "$work" -xf "$SRC_TAR"
    src=$work/linux-source-6.1
    make -C "$src" -s ARCH=x86_64 tinyconfig
    (cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -n .config "${fragments[@]}" >/dev/null)
    make -C "$src" -s ARCH=x86_64 olddefconfig
    missing=0
    while IFS= read -r line; do
        case "$line" in ''|'#'*) continue ;; esac
        if ! grep -qxF "$line" "$src/.config"; then
            echo "kernel: fragment option lost after olddefconfig: $line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$src/.config" || echo absent))" >&2
            missing=1
        fi
    done < <(cat "${fragments[@]}")
    [ $missing -eq 0 ] || { echo "kernel: fix the fragment (a dependency is probably unnamed)" >&2; exit 1; }
    make -C "$src" -s ARCH=x86_64 -j"$JOBS" bzImage KBUILD_BUILD_TIMESTAMP='2024-01-01' \
        KBUILD_BUILD_USER=aurae KBUILD_BUILD_HOST=aurae
    mkdir -p "$dest.tmp"
    cp "$src/arch/x86/boot/bzImage" "$src/vmlinux" "$dest.tmp/"
    cp "$src/.config" "$dest.tmp/config"
    make -C "$src" -s kernelversion > "$dest.tmp/version"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
else
    echo "kernel: $FLAVOR cached ($dest)"
fi
for f in bzImage vmlinux config version; do cp "$dest/$f" "$OUT/$f"; done
echo "kernel: $FLAVOR Linux $(cat "$OUT/version") (Debian linux-source-6.1 $pkgver), bzImage $(stat -c %s "$OUT/bzImage") bytes"
