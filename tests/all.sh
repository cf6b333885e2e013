#!/usr/bin/env bash
# `make test`: the static checks, the host tier, the offline Buildroot checks and the
# appliance tier, in that order, saying how long each phase took (also in BUILD/test-times).
#
# The two kernel builds (cached by content hash; minutes each on a fresh machine) start at
# once in the background, beside the Rust builds of the first phases: a Rust build leaves a
# core idle for long stretches (one crate at a time near its end, the release link with fat
# LTO), which the kernel build fills. The appliance tier starts only once nothing else runs.
#
# Usage: tests/all.sh BUILD_DIR
set -euo pipefail
BUILD=${1:?usage: tests/all.sh BUILD_DIR}
mkdir -p "$BUILD"
times=$BUILD/test-times
: > "$times"
began=$(date +%s)

phase() {
    local name=$1 t
    shift
    t=$(date +%s)
    "$@"
    echo "make test: $name $(( $(date +%s) - t )) s" | tee -a "$times"
}

make --no-print-directory deps
# Cargo's cache of this checkout (see the Makefile) grows with every change built; past
# CACHE_MAX_GIB it is dropped whole and rebuilt.
target=${CARGO_TARGET_DIR:-}
if [ -n "$target" ] && [ -d "$target" ]; then
    gib=$(( $(du -sk "$target" | cut -f1) / 1048576 ))
    if [ "$gib" -ge "${CACHE_MAX_GIB:-24}" ]; then
        echo "make test: $target holds $gib GiB; dropping it"
        rm -rf "$target"
    fi
fi
# In the background, each in a log of its own: the kernels, and auraed's release build
# (fat LTO: one long single-threaded link). Cargo locks each profile's directory on its
# own, so the release build and the debug builds of lint and the host tier run together.
background() {
    local name=$1 log=$2 t
    shift 2
    (
        t=$(date +%s)
        "$@" > "$log" 2>&1
        echo "make test: $name $(( $(date +%s) - t )) s (in the background)" >> "$times"
    ) &
}
klog=$BUILD/kernels.log
blog=$BUILD/release.log
background kernels "$klog" make --no-print-directory kernel kernel-metal
kernels=$!
background build "$blog" make --no-print-directory build
release=$!
trap 'kill $kernels $release 2>/dev/null || true' EXIT
echo "make test: the kernels and auraed's release build run in the background ($klog, $blog)"

phase lint make --no-print-directory lint
phase host make --no-print-directory test-host
t=$(date +%s)
for job in "release:$release:$blog" "kernels:$kernels:$klog"; do
    IFS=: read -r name pid log <<< "$job"
    if ! wait "$pid"; then
        tail -40 "$log" >&2
        echo "make test: the $name build failed (log: $log)" >&2
        exit 1
    fi
done
trap - EXIT
grep -h '^kernel: \|^auraed: ' "$klog" "$blog" || true
grep 'in the background' "$times" || true
echo "make test: waited $(( $(date +%s) - t )) s more for them" | tee -a "$times"
phase buildroot make --no-print-directory test-buildroot
phase appliance make --no-print-directory test-appliance
echo "make test: passed in $(( $(date +%s) - began )) s" | tee -a "$times"
