#!/usr/bin/env bash
# Packs the initramfs layers. The kernel unpacks concatenated archives in order, so
# `cat base pki [toolbox]` is one initramfs and one generic base image serves many nodes.
#
#   rootfs/pack.sh BUILD_DIR
# reads  BUILD_DIR/bin/auraed (static), BUILD_DIR/pki/{ca,server,spawn-ca}.{crt,key}, policy.toml
# reads  BUILD_DIR/kernel/bzImage (for the boot layer)
# writes BUILD_DIR/initramfs/{base,pki,toolbox,boot}.cpio.zst and BUILD_DIR/initramfs/appliance.cpio,
#        and pki-NAME.cpio.zst for each BUILD_DIR/pki/nodes/NAME (made by `auraed pki node`)
# Reproducible: same inputs give the same bytes (mtime 0, fixed inode order, zstd -19 -T1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
B=$(cd "${1:?usage: pack.sh BUILD_DIR}" && pwd)
out=$B/initramfs
mkdir -p "$out"
mk() { "$B/bin/auraed" mkcpio --base "$B" "$1" "$2"; }
z() { zstd -q -19 -T1 --no-check -f "$1" -o "$1.zst" && rm -f "$1"; }

# The node's trust bundle (HTTPS registries; Debian's ca-certificates on the build host).
bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$bundle" ] || { echo "rootfs: $bundle missing (apt-get install ca-certificates)" >&2; exit 1; }
cp "$bundle" "$B/ca-certificates.crt"
mk "$here/base.spec" "$out/base.cpio" && z "$out/base.cpio"

# The pki layer from a PKI directory SRC (relative to BUILD_DIR) into LAYER.cpio.zst.
pki_layer() { "$here/pki-layer.sh" "$B" "$1" "$out/$2.cpio.zst"; }
pki_layer pki pki
# One more per node that `auraed pki node DIR NAME` gave an identity of its own.
for d in "$B"/pki/nodes/*/; do
    [ -d "$d" ] || continue
    n=$(basename "$d")
    pki_layer "pki/nodes/$n" "pki-$n"
    printf 'rootfs: %-8s %8d bytes (node %s)\n' "pki-$n" "$(stat -c %s "$out/pki-$n.cpio.zst")" "$n"
done

# Toolbox: Debian's static busybox and its applets, for tests and the demo.
bb=/bin/busybox
[ -x "$bb" ] || { echo "rootfs: $bb missing (apt-get install busybox-static)" >&2; exit 1; }
file "$bb" 2>/dev/null | grep -q 'statically linked' || ldd "$bb" 2>&1 | grep -q 'not a dynamic' \
    || { echo "rootfs: $bb is not static" >&2; exit 1; }
mkdir -p "$B/toolbox" && cp "$bb" "$B/toolbox/busybox"
{
    echo "dir /bin 0755 0 0"
    echo "file /bin/busybox toolbox/busybox 0755 0 0"
    for a in $("$bb" --list | sort); do
        case "$a" in busybox|init|linuxrc|aer|auraed) continue ;; esac
        echo "slink /bin/$a busybox 0777 0 0"
    done
} > "$out/toolbox.spec"
mk "$out/toolbox.spec" "$out/toolbox.cpio" && z "$out/toolbox.cpio"

# Boot: the node's own kernel, which RunVirtualMachine and Spawn hand to guests.
cat > "$out/boot.spec" <<SPEC
dir /boot 0755 0 0
file /boot/vmlinuz kernel/bzImage 0644 0 0
SPEC
mk "$out/boot.spec" "$out/boot.cpio" && z "$out/boot.cpio"

for l in base pki toolbox boot; do printf 'rootfs: %-8s %8d bytes\n' "$l" "$(stat -c %s "$out/$l.cpio.zst")"; done
