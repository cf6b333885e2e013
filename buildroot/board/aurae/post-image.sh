#!/usr/bin/env bash
# Buildroot post-image script (BR2_ROOTFS_POST_IMAGE_SCRIPT). Buildroot exports
# BINARIES_DIR, TARGET_DIR, BUILD_DIR, BR2_CONFIG and BR2_EXTERNAL_AURAE_PATH.
#
# Makes the same layered initramfs as `make image`, with the same script (rootfs/pack.sh)
# over a build directory laid out as the project's: bin/auraed from the target,
# kernel/bzImage from Buildroot, pki/ from BR2_AURAE_PKI_DIR (made if missing).
# Writes BINARIES_DIR/{base,pki,toolbox,boot}.cpio.zst and aurae-initramfs.cpio.zst (their
# concatenation: boot it with bzImage, e.g. qemu/run with BUILD pointing here).
set -euo pipefail
: "${BINARIES_DIR:?run by Buildroot}" "${TARGET_DIR:?}" "${BR2_CONFIG:?}" "${BR2_EXTERNAL_AURAE_PATH:?}"
top=$(cd "$BR2_EXTERNAL_AURAE_PATH/.." && pwd)
conf() { sed -n "s/^$1=\"\\{0,1\\}\\([^\"]*\\)\"\\{0,1\\}\$/\\1/p" "$BR2_CONFIG" | head -1; }

# The kernel fragments must have survived Buildroot's configuration (as kernel/build.sh
# checks for its own build).
for cfg in "${BUILD_DIR:-/nonexistent}"/linux-*/.config; do
    [ -f "$cfg" ] || continue
    frag=$(dirname "$cfg")/.aurae-fragments
    [ -f "$frag" ] || continue
    lost=0
    while IFS= read -r line; do
        case "$line" in ''|'#'*) continue ;; esac
        grep -qxF "$line" "$cfg" || { echo "aurae post-image: kernel option lost: $line" >&2; lost=1; }
    done < "$frag"
    [ $lost -eq 0 ] || exit 1
done

B=$BINARIES_DIR/aurae
rm -rf "${B:?}/bin" "${B:?}/kernel" && mkdir -p "$B/bin" "$B/kernel"
install -m 0755 "$TARGET_DIR/usr/sbin/auraed" "$B/bin/auraed"
ln -sf auraed "$B/bin/aer"
install -m 0644 "$BINARIES_DIR/bzImage" "$B/kernel/bzImage"

pki=$(conf BR2_AURAE_PKI_DIR)
pki=${pki//\$(BR2_EXTERNAL_AURAE_PATH)/$BR2_EXTERNAL_AURAE_PATH}
pki=${pki:-$top/build/pki}
if [ ! -f "$pki/ca.key" ]; then
    "$B/bin/auraed" pki init "$pki"
    "$B/bin/auraed" pki spawn-ca "$pki"
    "$B/bin/auraed" pki grant "$pki" spiffe://aurae.local/client/admin admin
fi
rm -f "$B/pki" && ln -s "$(cd "$pki" && pwd)" "$B/pki"

"$top/rootfs/pack.sh" "$B"
: > "$BINARIES_DIR/aurae-initramfs.cpio.zst"
for l in base pki toolbox boot; do
    cp "$B/initramfs/$l.cpio.zst" "$BINARIES_DIR/$l.cpio.zst"
    cat "$B/initramfs/$l.cpio.zst" >> "$BINARIES_DIR/aurae-initramfs.cpio.zst"
done
chmod 0600 "$BINARIES_DIR/pki.cpio.zst" "$BINARIES_DIR/aurae-initramfs.cpio.zst"
echo "aurae post-image: $BINARIES_DIR/bzImage + aurae-initramfs.cpio.zst ($(stat -c %s "$BINARIES_DIR/aurae-initramfs.cpio.zst") B)"
