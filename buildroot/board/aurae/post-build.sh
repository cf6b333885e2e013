#!/usr/bin/env bash
# Buildroot post-build script (BR2_ROOTFS_POST_BUILD_SCRIPT): $1 is TARGET_DIR.
# The target holds only auraed; check it is there and static before images are made.
set -euo pipefail
target=${1:?usage: post-build.sh TARGET_DIR}
bin=$target/usr/sbin/auraed
[ -x "$bin" ] || { echo "aurae post-build: $bin missing (BR2_PACKAGE_AURAED)" >&2; exit 1; }
if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    echo "aurae post-build: $bin is dynamically linked; auraed must be static" >&2
    exit 1
fi
