#!/usr/bin/env bash
# UEFI boot media for real machines (and OVMF), made without root or loop mounts:
#
#   rootfs/uefi.sh BUILD_DIR OUT_DIR
#
# OUT_DIR/aurae.efi  a Unified Kernel Image: systemd's EFI stub (Debian's systemd-boot-efi)
#                    with the `metal` kernel, its command line, os-release and the initramfs
#                    layers as one PE file the firmware starts directly
# OUT_DIR/esp.img    a FAT EFI System Partition holding it as \EFI\BOOT\BOOTX64.EFI, the
#                    path firmware boots when it has no boot entries (mkfs.vfat -C + mtools)
# OUT_DIR/usb.img    a raw GPT disk whose only partition is that ESP: `dd` it to a USB stick
#
# Environment (optional):
#   NODE=NAME          embed node NAME's own identity (`auraed pki node`, made once and kept
#                      in BUILD_DIR/pki/nodes/NAME) instead of the build's node identity
#   UEFI_LAYERS="base toolbox boot"   the shared layers (the pki layer is added after them)
#   UEFI_CMDLINE=...   more kernel command line, e.g. "aurae.ip=10.1.2.3/24 aurae.gw=10.1.2.1"
#                      (the default uplink is DHCP on eth0)
#   SB_KEY=KEY.pem SB_CERT=CERT.pem   sign the UKI for Secure Boot (sbsign; the key must
#                      not be passphrase-protected) with a key whose certificate the
#                      machines' db holds; the firmware then refuses any other image
# The media hold a private key (the node's): they are written mode 0600.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
B=$(cd "${1:?usage: uefi.sh BUILD_DIR OUT_DIR}" && pwd)
OUT=${2:?usage: uefi.sh BUILD_DIR OUT_DIR}
STUB=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
kernel=$B/kernel-metal/bzImage
LAYERS=${UEFI_LAYERS:-base toolbox boot}
[ -f "$STUB" ] || { echo "uefi: $STUB missing (apt-get install systemd-boot-efi)" >&2; exit 1; }
[ -f "$kernel" ] || { echo "uefi: $kernel missing (kernel/build.sh $B/kernel-metal metal)" >&2; exit 1; }
for t in mkfs.vfat mmd mcopy sfdisk objcopy; do
    command -v "$t" >/dev/null || { echo "uefi: $t missing (apt-get install dosfstools mtools fdisk binutils)" >&2; exit 1; }
done
mkdir -p "$OUT"
umask 077
work=$(mktemp -d "${TMPDIR:-/tmp}/aurae-uefi.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The initramfs: the shared layers, then the identity (the build's, or NODE's).
: > "$work/initrd"
for l in $LAYERS; do
    f=$B/initramfs/$l.cpio.zst
    [ -f "$f" ] || { echo "uefi: layer $f missing (make image)" >&2; exit 1; }
    cat "$f" >> "$work/initrd"
done
identity=pki
[ -z "${NODE:-}" ] || identity=node:$NODE
"$here/pki-layer.sh" "$B" "$identity" "$work/pki.cpio.zst"
cat "$work/pki.cpio.zst" >> "$work/initrd"

# Both consoles get the kernel's messages; /dev/console (the last) is the serial port, and
# auraed mirrors its own lines to the screen (tty1).
printf 'console=tty0 console=ttyS0,115200 quiet panic=-1 aurae.ip=dhcp %s' "${UEFI_CMDLINE:-}" > "$work/cmdline"
version=$("$B/bin/auraed" --version 2>/dev/null | awk '{print $NF}')
cat > "$work/os-release" <<OSR
NAME="Aurae"
ID=aurae
VERSION_ID=${version:-unknown}
PRETTY_NAME="Aurae ${version:-} (auraed as PID 1)"
OSR

# Each section goes after the stub's own (and after the previous one), 64 KiB aligned, so
# they never overlap however large the kernel or the initramfs grow (ImageBase is 0).
align() { echo $(( ($1 + 0xffff) / 0x10000 * 0x10000 )); }
end=0
while read -r idx _ size vma _; do
    [[ $idx =~ ^[0-9]+$ ]] || continue
    (( 0x$vma + 0x$size > end )) && end=$(( 0x$vma + 0x$size ))
done < <(objdump -h "$STUB")
[ "$end" -gt 0 ] || { echo "uefi: cannot read the sections of $STUB" >&2; exit 1; }
args=()
for s in osrel:os-release cmdline:cmdline linux:"$kernel" initrd:initrd; do
    name=${s%%:*} file=${s#*:}
    [[ $file == /* ]] || file=$work/$file
    vma=$(align "$end")
    args+=(--add-section ".$name=$file" --change-section-vma ".$name=$(printf '0x%x' "$vma")")
    end=$(( vma + $(stat -c %s "$file") ))
done
objcopy "${args[@]}" "$STUB" "$work/aurae.efi"
signed=""
if [ -n "${SB_KEY:-}" ]; then
    command -v sbsign >/dev/null || { echo "uefi: sbsign missing (apt-get install sbsigntool)" >&2; exit 1; }
    sbsign --key "$SB_KEY" --cert "${SB_CERT:?SB_CERT: the certificate of SB_KEY}" \
        --output "$work/aurae.signed.efi" "$work/aurae.efi" 2>/dev/null
    sbverify --cert "$SB_CERT" "$work/aurae.signed.efi" >/dev/null 2>&1 \
        || { echo "uefi: the signed UKI does not verify against $SB_CERT" >&2; exit 1; }
    mv -f "$work/aurae.signed.efi" "$work/aurae.efi"
    signed=", signed for Secure Boot ($(openssl x509 -noout -subject -in "$SB_CERT" | sed 's/^subject=//'))"
fi

# The ESP: the UKI plus 2 MiB, at least 8 MiB; mkfs.vfat picks FAT12/16/32 by size (UEFI
# reads all three). A fixed volume id keeps the image reproducible for the same inputs.
uki_kib=$(( ($(stat -c %s "$work/aurae.efi") + 1023) / 1024 ))
esp_kib=$(( (uki_kib + 2048 + 1023) / 1024 * 1024 ))
[ $esp_kib -ge 8192 ] || esp_kib=8192
rm -f "$work/esp.img"
mkfs.vfat -C -n AURAE -i 0a0ae0e1 "$work/esp.img" "$esp_kib" >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/aurae.efi" ::/EFI/BOOT/BOOTX64.EFI

# The stick: 1 MiB for the GPT, the ESP, and 1 MiB at the end for the backup GPT.
usb_sectors=$(( (esp_kib + 2048) * 2 ))
truncate -s $(( usb_sectors * 512 )) "$work/usb.img"
printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="AURAE-ESP"\n' \
    $(( esp_kib * 2 )) | sfdisk --quiet --no-reread --no-tell-kernel "$work/usb.img"
dd if="$work/esp.img" of="$work/usb.img" bs=1M seek=1 conv=notrunc,sparse status=none

for f in aurae.efi esp.img usb.img; do mv -f "$work/$f" "$OUT/$f"; done
echo "uefi: $OUT/aurae.efi $(stat -c %s "$OUT/aurae.efi") B (kernel $(stat -c %s "$kernel") B, initramfs $(stat -c %s "$work/initrd") B)," \
    "esp.img $(stat -c %s "$OUT/esp.img") B, usb.img $(stat -c %s "$OUT/usb.img") B${NODE:+, identity of node $NODE}$signed"
