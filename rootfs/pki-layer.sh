#!/usr/bin/env bash
# One node's pki layer: its keys, certificates and policy as /etc/aurae/pki in a cpio.
#
#   rootfs/pki-layer.sh BUILD_DIR SRC OUT.cpio.zst
# SRC is a PKI directory relative to BUILD_DIR (pki, or pki/nodes/NAME from
# `auraed pki node`), or node:NAME: node NAME's own identity, made once with
# `auraed pki node BUILD_DIR/pki NAME` and kept there (pxe.sh and uefi.sh use this).
# It holds the node's private keys: the layer is mode 0600, checked.
set -euo pipefail
B=$(cd "${1:?usage: pki-layer.sh BUILD_DIR SRC OUT}" && pwd)
src=${2:?SRC}
dest=${3:?OUT}
if [[ $src == node:* ]]; then
    name=${src#node:}
    [[ $name =~ ^[a-z0-9][a-z0-9.-]{0,62}$ ]] || { echo "rootfs: '$name' is not a node name (a-z, 0-9, '.', '-')" >&2; exit 2; }
    [ -d "$B/pki/nodes/$name" ] || "$B/bin/auraed" pki node "$B/pki" "$name" >/dev/null
    src=pki/nodes/$name
fi
spec=${dest%.cpio.zst}.spec
cpio=${dest%.zst}
cat > "$spec" <<SPEC
dir /etc 0755 0 0
dir /etc/aurae 0755 0 0
dir /etc/aurae/pki 0700 0 0
file /etc/aurae/pki/ca.crt $src/ca.crt 0644 0 0
file /etc/aurae/pki/server.crt $src/server.crt 0644 0 0
file /etc/aurae/pki/server.key $src/server.key 0600 0 0
file /etc/aurae/pki/spawn-ca.crt $src/spawn-ca.crt 0644 0 0
file /etc/aurae/pki/spawn-ca.key $src/spawn-ca.key 0600 0 0
file /etc/aurae/pki/policy.toml $src/policy.toml 0644 0 0
SPEC
# mkcpio writes it 0600 (it carries a 0600 file) and zstd keeps that mode.
"$B/bin/auraed" mkcpio --base "$B" "$spec" "$cpio"
zstd -q -19 -T1 --no-check -f "$cpio" -o "$dest" && rm -f "$cpio"
[ "$(stat -c %a "$dest")" = 600 ] || { echo "rootfs: $dest must be mode 0600" >&2; exit 1; }
