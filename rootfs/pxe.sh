#!/usr/bin/env bash
# Lays out a network boot directory for a fleet: what a TFTP (or HTTP) server hands out.
#
#   rootfs/pxe.sh BUILD_DIR OUT_DIR MAC=NAME [MAC=NAME ...]
#
# OUT_DIR/boot.ipxe   the iPXE script: the kernel, the shared layers, then the pki layer
#                     named after the booting machine's MAC (${net0/mac:hexhyp})
# OUT_DIR/bzImage, base.cpio.zst, toolbox.cpio.zst, boot.cpio.zst   shared by every node
# OUT_DIR/bzImage-metal   the metal flavor (EFI stub, real NICs), which UEFI machines boot
# OUT_DIR/ipxe.efi, undionly.kpxe   Debian's iPXE, for machines whose firmware PXE is not
#                     iPXE: UEFI PXE loads ipxe.efi, a legacy PXE ROM chainloads undionly.kpxe
#                     (the DHCP server picks the file by client architecture; docs/deploy.md)
# OUT_DIR/nodes/52-54-00-00-00-01.cpio.zst   one node's identity (mode 0600)
#
# Each NAME gets an identity of its own (`auraed pki node BUILD_DIR/pki NAME`, made once
# and kept there). A machine whose MAC has no layer boots without an identity: it says so
# on its console and does not serve. Layers other than the pki ones: PXE_LAYERS.
# The nodes take their address by DHCP (aurae.ip=dhcp); the DHCP server's fixed leases
# name them. See docs/deploy.md for dnsmasq and for real NICs' PXE ROMs (undionly.kpxe).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
B=$(cd "${1:?usage: pxe.sh BUILD_DIR OUT_DIR MAC=NAME...}" && pwd)
OUT=${2:?OUT_DIR}
shift 2
LAYERS=${PXE_LAYERS:-base toolbox boot}
mkdir -p "$OUT/nodes"
cp "$B/kernel/bzImage" "$OUT/bzImage"
metal=$B/kernel-metal/bzImage
[ -f "$metal" ] || { echo "pxe: $metal missing (make kernel-metal): UEFI machines boot it" >&2; exit 1; }
cp "$metal" "$OUT/bzImage-metal"
for f in ipxe.efi undionly.kpxe; do
    [ -f "/usr/lib/ipxe/$f" ] || { echo "pxe: /usr/lib/ipxe/$f missing (apt-get install ipxe)" >&2; exit 1; }
    cp "/usr/lib/ipxe/$f" "$OUT/$f"
done
initrds=""
names=""
for l in $LAYERS; do
    cp "$B/initramfs/$l.cpio.zst" "$OUT/$l.cpio.zst"
    initrds="${initrds}initrd \${aurae-base}/$l.cpio.zst
"
    names="$names initrd=$l.cpio.zst"
done
for pair in "$@"; do
    mac=${pair%%=*}
    name=${pair#*=}
    [[ $mac =~ ^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$ ]] || { echo "pxe: '$mac' is not a MAC (in $pair)" >&2; exit 2; }
    file=$(echo "$mac" | tr 'A-F:' 'a-f-')
    "$here/pki-layer.sh" "$B" "node:$name" "$OUT/nodes/$file.cpio.zst"
    rm -f "$OUT/nodes/$file.spec"
    echo "pxe: $mac -> $name (spiffe://.../node/$name)"
done
cat > "$OUT/boot.ipxe" <<IPXE
#!ipxe
# Aurae fleet boot (rootfs/pxe.sh): one kernel and shared layers for every machine, and
# each machine's identity by its MAC. Without one it boots, says so and does not serve.
# UEFI machines (ipxe.efi) boot the metal kernel through its EFI stub, which reads the
# initrds named by initrd= from iPXE's files; BIOS machines boot the minimal one.
isset \${aurae-base} || set aurae-base tftp://\${next-server}
${initrds}set aurae-initrds${names}
initrd --name pki.cpio.zst \${aurae-base}/nodes/\${net0/mac:hexhyp}.cpio.zst && set aurae-initrds \${aurae-initrds} initrd=pki.cpio.zst || echo aurae: no identity for \${net0/mac} on this boot server
set aurae-args console=tty0 console=ttyS0 quiet panic=-1 aurae.ip=dhcp \${aurae-cmdline}
iseq \${platform} efi && kernel \${aurae-base}/bzImage-metal \${aurae-initrds} \${aurae-args} || kernel \${aurae-base}/bzImage \${aurae-args}
boot
IPXE
echo "pxe: $OUT ready ($(du -sh "$OUT" | cut -f1)); serve it over TFTP with boot.ipxe as the boot file"
