#!/usr/bin/env bash
# Packs the initramfs layers. The kernel unpacks concatenated archives in order, so
# `cat base pki [toolbox]` is one initramfs and one generic base image serves many nodes.
#
#   rootfs/pack.sh BUILD_DIR
# reads  BUILD_DIR/bin/auraed (static), BUILD_DIR/pki/{ca,server}.{crt,key}
# reads  BUILD_DIR/kernel/bzImage (for the boot layer)
# writes BUILD_DIR/initramfs/{base,pki,toolbox,boot}.cpio.zst and BUILD_DIR/initramfs/appliance.cpio
# Reproducible: same inputs give the same bytes (mtime 0, fixed inode order, zstd -19 -T1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
B=$(cd "${1:?usage: pack.sh BUILD_DIR}" && pwd)
out=$B/initramfs
mkdir -p "$out"
mk() { "$B/bin/auraed" mkcpio --base "$B" "$1" "$2"; }
z() { zstd -q -19 -T1 --no-check -f "$1" -o "$1.zst" && rm -f "$1"; }

mk "$here/base.spec" "$out/base.cpio" && z "$out/base.cpio"

cat > "$out/pki.spec" <<SPEC
dir /etc 0755 0 0
dir /etc/aurae 0755 0 0
dir /etc/aurae/pki 0700 0 0
file /etc/aurae/pki/ca.crt pki/ca.crt 0644 0 0
file /etc/aurae/pki/server.crt pki/server.crt 0644 0 0
file /etc/aurae/pki/server.key pki/server.key 0600 0 0
file /etc/aurae/pki/spawn-ca.crt pki/spawn-ca.crt 0644 0 0
file /etc/aurae/pki/spawn-ca.key pki/spawn-ca.key 0600 0 0
file /etc/aurae/pki/policy.toml pki/policy.toml 0644 0 0
SPEC
# The pki layer holds the node's private keys: mkcpio writes it 0600 (it carries a 0600
# file) and zstd keeps that mode; checked here all the same.
mk "$out/pki.spec" "$out/pki.cpio" && z "$out/pki.cpio"
[ "$(stat -c %a "$out/pki.cpio.zst")" = 600 ] || { echo "rootfs: $out/pki.cpio.zst must be mode 0600" >&2; exit 1; }

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
