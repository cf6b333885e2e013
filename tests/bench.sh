#!/usr/bin/env bash
# `make bench`: boot figures and sizes of the appliance, measured here, printed as a table.
#   tests/bench.sh BUILD_DIR [RUNS]
# Boots the appliance RUNS times (default 5) under QEMU (TCG unless ACCEL says otherwise);
# for each boot: QEMU start → health SERVING (host wall clock, includes the TLS handshake),
# kernel start → auraed serving (guest CLOCK_BOOTTIME, from NodeInfo), auraed RSS idle.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
B=$(cd "${1:?usage: bench.sh BUILD_DIR [RUNS]}" && pwd)
RUNS=${2:-5}
aer() { "$B/bin/aer" --addr "127.0.0.1:$port" --server-name localhost --ca "$B/pki/ca.crt" \
        --cert "$B/pki/client.crt" --key "$B/pki/client.key" "$@"; }
# The node powers off as asked; the answer to the call is sometimes lost with it ("transport
# error"), which is no failure of the bench: QEMU ending says the node went down.
node_down() { aer node shutdown --grace-ms 1000 >/dev/null 2>&1 || echo "bench: the node's answer to shutdown was lost; it powers off anyway" >&2; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp); trap 'rm -f "$log"' EXIT
qemu_ms=(); kernel_ms=(); rss=()
for i in $(seq 1 "$RUNS"); do
    t0=$(date +%s%N)
    BUILD=$B PORT=$port NO_REBOOT=1 ACCEL=${ACCEL:-tcg} "$here/qemu/run" > "$log" 2>&1 &
    qpid=$!
    until aer --timeout 0.25 health >/dev/null 2>&1; do
        kill -0 $qpid 2>/dev/null || { echo "bench: QEMU exited"; cat "$log"; exit 1; }
        [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 120 ] || { echo "bench: no SERVING in 120 s"; cat "$log"; kill $qpid; exit 1; }
        sleep 0.05
    done
    t1=$(date +%s%N)
    sleep 2 # let the node settle before reading idle RSS
    info=$(aer --json node info)
    qemu_ms+=($(( (t1 - t0) / 1000000 )))
    kernel_ms+=($(echo "$info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["serving_since_boot_micros"]//1000)'))
    rss+=($(echo "$info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["auraed_rss_bytes"]//1024)'))
    node_down
    wait $qpid
done
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "p50 %d, min %d, max %d (n=%d)", a[int((NR+1)/2)], a[1], a[NR], NR}'; }
k=$(stat -c %s "$B/kernel/bzImage"); base=$(stat -c %s "$B/initramfs/base.cpio.zst"); pki=$(stat -c %s "$B/initramfs/pki.cpio.zst")
echo
echo "== Aurae bench ($(date -u +%F), accel ${ACCEL:-tcg}, $(nproc) cores, Linux $(cat "$B/kernel/version"), auraed $(cat "$B/bin/auraed.libc"))"
printf '%-44s %s\n' "QEMU start -> health SERVING (ms)" "$(stats "${qemu_ms[@]}")"
printf '%-44s %s\n' "kernel start -> auraed serving (ms, guest)" "$(stats "${kernel_ms[@]}")"
printf '%-44s %s\n' "auraed idle RSS (KiB)" "$(stats "${rss[@]}")"
printf '%-44s %d\n' "kernel bzImage (bytes)" "$k"
printf '%-44s %d\n' "initramfs base+pki, zstd (bytes)" "$((base + pki))"
printf '%-44s %d (%.2f MiB; target <= 8 MiB)\n' "appliance kernel+initramfs (bytes)" "$((k + base + pki))" "$(echo "($k+$base+$pki)/1048576" | bc -l)"
printf '%-44s %d\n' "toolbox layer, optional (bytes)" "$(stat -c %s "$B/initramfs/toolbox.cpio.zst")"
bootl=$(stat -c %s "$B/initramfs/boot.cpio.zst")
printf '%-44s %d (with it, the appliance is %.2f MiB)\n' "boot layer: the kernel for VMs/Spawn (bytes)" "$bootl" "$(echo "($k+$base+$pki+$bootl)/1048576" | bc -l)"
printf '%-44s %d\n' "auraed static binary (bytes)" "$(stat -c %s "$B/bin/auraed")"

# VMs and Spawn, driven from here with aer (each step takes seconds under TCG, so the
# client's round trip does not matter): Spawn -> child serving (host wall clock) and the
# child's own kernel start -> serving; the VMM's memory beyond guest memory (RSS of every
# mapping but the guest RAM); VMs created per second (RunVirtualMachine returns once the
# vCPUs run; guests keep booting meanwhile).
vm_bench() {
    local n=${BENCH_SPAWNS:-5} i t0 t1 spawn_ms=() child_ms=()
    echo
    echo "== VMs and Spawn (auraed's VMM under the appliance's KVM, itself under ${ACCEL:-tcg}; nested)"
    aer exec mkguest --cell benchnode --wait -- /bin/sh -c 'set -e; d=$(mktemp -d); mkdir -p $d/bin $d/proc /var/lib/aurae/vm
        cp /bin/busybox $d/bin/; printf "#!/bin/busybox sh\n/bin/busybox sleep 100000\n" > $d/init; chmod +x $d/init
        cd $d && find . | cpio -o -H newc > /var/lib/aurae/vm/idle.cpio 2>/dev/null' >/dev/null
    for i in $(seq 1 "$n"); do
        t0=$(date +%s%N)
        aer --timeout 300 spawn "b$i" >/dev/null || { echo "bench: spawn failed"; return; }
        t1=$(date +%s%N)
        spawn_ms+=($(( (t1 - t0) / 1000000 )))
        child_ms+=($(aer --instance "b$i" --json node info | python3 -c 'import json,sys; print(json.load(sys.stdin)["serving_since_boot_micros"]//1000)'))
        aer --timeout 60 instance stop "b$i" --grace-ms 1000 >/dev/null; aer instance free "b$i" >/dev/null
    done
    printf '%-44s %s\n' "Spawn -> child serving (ms, host)" "$(stats "${spawn_ms[@]}")"
    printf '%-44s %s\n' "child kernel start -> serving (ms, child)" "$(stats "${child_ms[@]}")"

    aer --timeout 120 vm run ovh --memory 128M --initramfs /var/lib/aurae/vm/idle.cpio >/dev/null
    sleep 5
    local pid; pid=$(aer --json vm status ovh | python3 -c 'import json,sys; print(json.load(sys.stdin)["vmm_pid"])')
    aer exec ovhsig --cell benchnode --wait -- /bin/kill -USR1 "$pid" >/dev/null
    sleep 1
    local line; line=$(aer vm logs ovh 2>&1 | grep 'aurae-vmm: memory:' | tail -1)
    ovh=$(echo "$line" | sed -n 's/.*VMM overhead \([0-9]*\) KiB.*/\1/p')
    own=$(echo "$line" | sed -n 's/.*its own \([0-9]*\) KiB.*/\1/p')
    guest=$(echo "$line" | sed -n 's/.*guest RAM resident \([0-9]*\) KiB.*/\1/p')
    printf '%-44s %s KiB (guest RAM resident: %s KiB)\n' "VMM RSS beyond guest memory" "${ovh:-?}" "${guest:-?}"
    printf '%-44s %s KiB (target <= 3072; the rest of the RSS is auraed'"'"'s own pages, shared with PID 1)\n' "VMM memory of its own beyond guest memory" "${own:-?}"
    aer vm stop ovh --grace-ms 1000 >/dev/null; aer vm free ovh >/dev/null

    local vms=${BENCH_VMS:-10}
    t0=$(date +%s%N)
    for i in $(seq 1 "$vms"); do aer --timeout 120 vm run "r$i" --memory 64M --initramfs /var/lib/aurae/vm/idle.cpio >/dev/null; done
    t1=$(date +%s%N)
    printf '%-44s %.1f (%d VMs in %d ms)\n' "VMs created per second (sequential)" "$(echo "$vms * 1000000000 / ($t1 - $t0)" | bc -l)" "$vms" "$(( (t1 - t0) / 1000000 ))"
    for i in $(seq 1 "$vms"); do aer vm stop "r$i" --grace-ms 500 >/dev/null; aer vm free "r$i" >/dev/null; done
}

# Pods: RunPod -> every container running (host wall clock, aer) beside the same by hand
# (Spawn, then a cell sharing the instance's network, IPC and UTS and a process in it; by
# hand the instance could not get an image, so this lower bound has none and the pod
# also sends its image); then idle one-container pods: the VMM's memory beyond guest RAM
# (its SIGUSR1 report, from the pod's instance console), auraed's RSS per pod, the node's
# MemAvailable per pod, and what that leaves room for in this 2 GiB appliance.
pod_bench() {
    local n=${BENCH_PODS:-5} i t0 t1 pod_ms=() hand_ms=()
    local img="$REG_GUEST/test/busybox:1"
    echo
    echo "== pods (instances are microVMs under the appliance's KVM, itself under ${ACCEL:-tcg}; nested)"
    for i in $(seq 1 "$n"); do
        t0=$(date +%s%N)
        aer --timeout 300 pod run "p$i" --image "$img" --isolation vm -- 'exec sleep 100000' >/dev/null \
            || { echo "bench: pod run failed"; return; }
        t1=$(date +%s%N); pod_ms+=($(( (t1 - t0) / 1000000 )))
        aer --timeout 60 pod stop "p$i" --grace-ms 1000 >/dev/null; aer pod free "p$i" >/dev/null
        t0=$(date +%s%N)
        aer --timeout 300 spawn "h$i" --isolation vm >/dev/null || { echo "bench: spawn failed"; return; }
        aer --instance "h$i" cell create c --share net,ipc,uts >/dev/null
        aer --instance "h$i" exec c --cell c -- /bin/auraed --version >/dev/null
        t1=$(date +%s%N); hand_ms+=($(( (t1 - t0) / 1000000 )))
        aer --timeout 60 instance stop "h$i" --grace-ms 1000 >/dev/null; aer instance free "h$i" >/dev/null
    done
    local pod50 hand50
    pod50=$(printf '%s\n' "${pod_ms[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    hand50=$(printf '%s\n' "${hand_ms[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    printf '%-44s %s\n' "RunPod -> container running (ms, host)" "$(stats "${pod_ms[@]}")"
    printf '%-44s %s\n' "Spawn + cell + process by hand (ms, host)" "$(stats "${hand_ms[@]}")"
    printf '%-44s %.2f (goal <= 1.1)\n' "RunPod / by hand, p50" "$(echo "$pod50 / $hand50" | bc -l)"
    # Where the difference goes: the node logs how long giving the image took.
    local given=()
    given=($(grep -o 'given to its instance in [0-9]* ms' "$log" | awk '{print $6}' | head -n "$n"))
    [ ${#given[@]} -gt 0 ] && printf '%-44s %s\n' "  of which: the image given to the instance (ms)" "$(stats "${given[@]}")"

    local idle=${BENCH_IDLE_PODS:-4} avail0 avail1 rss0 rss1 ovh=() own=() pid line
    meminfo() { aer exec "mi$1" --cell benchhost --wait -- /bin/sh -c 'grep MemAvailable /proc/meminfo' >/dev/null; aer logs "mi$1" | awk '{print $2}'; aer free "mi$1" >/dev/null; }
    avail0=$(meminfo a)
    rss0=$(aer --json node info | python3 -c 'import json,sys; print(json.load(sys.stdin)["auraed_rss_bytes"]//1024)')
    for i in $(seq 1 "$idle"); do
        aer --timeout 300 pod run "idle$i" --image "$img" --isolation vm --memory 32M -- 'exec sleep 100000' >/dev/null \
            || { echo "bench: idle pod failed"; return; }
    done
    sleep 5
    avail1=$(meminfo b)
    rss1=$(aer --json node info | python3 -c 'import json,sys; print(json.load(sys.stdin)["auraed_rss_bytes"]//1024)')
    for i in $(seq 1 "$idle"); do
        pid=$(aer --json pod status "idle$i" | python3 -c 'import json,sys; print(json.load(sys.stdin)["instance"]["pid"])')
        # benchnode shares the node's pid namespace, where the VMM's pid is.
        aer exec "sig$i" --cell benchnode --wait -- /bin/kill -USR1 "$pid" >/dev/null || true; aer free "sig$i" >/dev/null
        sleep 1
        line=$(aer pod logs "idle$i" --console 2>&1 | grep 'aurae-vmm: memory:' | tail -1)
        ovh+=($(echo "$line" | sed -n 's/.*VMM overhead \([0-9]*\) KiB.*/\1/p'))
        own+=($(echo "$line" | sed -n 's/.*its own \([0-9]*\) KiB.*/\1/p'))
    done
    local per=$(( (avail0 - avail1) / idle ))
    printf '%-44s %s\n' "idle pod: VMM RSS beyond guest RAM (KiB)" "$(stats "${ovh[@]}")"
    printf '%-44s %s (target <= 3072)\n' "idle pod: VMM's own beyond guest RAM (KiB)" "$(stats "${own[@]}")"
    printf '%-44s %d\n' "idle pod: auraed RSS on the node (KiB/pod)" "$(( (rss1 - rss0) / idle ))"
    printf '%-44s %d KiB (guest RAM touched + VMM + node state)\n' "idle pod: node MemAvailable per pod" "$per"
    printf '%-44s %d (%d running + MemAvailable %d KiB / %d KiB per pod; estimated, not filled)\n' "idle pods this 2 GiB appliance holds" "$(( idle + avail1 / per ))" "$idle" "$avail1" "$per"
    for i in $(seq 1 "$idle"); do aer --timeout 60 pod stop "idle$i" --grace-ms 500 >/dev/null; aer pod free "idle$i" >/dev/null; done
}

# Runtime figures, measured inside one more boot (with the bench-only layer: crun, an OCI
# bundle and a client certificate) by `auraed bench-runtime`, run as an executable in a cell
# that shares the node's network and mounts.
# A registry on the host's loopback for the image figures, reached from the guest through a
# QEMU guestfwd rule (as the appliance tests do): the busybox test image and a generated
# ~64 MiB image of 4 random layers.
REG_GUEST=10.0.2.100:5000
# shellcheck source=tests/registry.sh
. "$here/tests/registry.sh"
trap 'rm -f "$log"; kill $reg_pid 2>/dev/null; rm -rf "$reg_dir"' EXIT
"$here/tests/images/build.sh" "$B/test-images" >/dev/null
"$here/tests/images/bench-image.sh" "$B/bench-image" >/dev/null
registry_ready
skopeo copy -q --dest-tls-verify=false "oci:$B/test-images/layout:busybox" "docker://127.0.0.1:$reg_port/test/busybox:1"
skopeo copy -q --dest-tls-verify=false "oci:$B/bench-image/layout:big" "docker://127.0.0.1:$reg_port/bench/big:1"
big_layers=$(python3 - "$B/bench-image/layout" <<'PY'
import json, os, sys
L = sys.argv[1]
idx = json.load(open(os.path.join(L, "index.json")))
m = json.load(open(os.path.join(L, "blobs/sha256", idx["manifests"][0]["digest"].split(":")[1])))
print(" ".join(l["digest"] for l in m["layers"]))
PY
)
big_bytes=$(du -cb "$B"/bench-image/layout/blobs/sha256/* | tail -1 | cut -f1)

# Pull + unpack of the big image (aer image pull, host wall clock) beside busybox wget of
# the same blobs in the same boot (the link's limit: QEMU's user network and guestfwd).
image_bench() {
    echo
    echo "== images (pull from a registry on the host through QEMU's user network, accel ${ACCEL:-tcg})"
    local wget_ms pull_ms t0 t1
    t0=$(date +%s%N)
    aer --timeout 600 exec bwget --cell benchhost --wait -- /bin/sh -c \
        "for d in $big_layers; do wget -q -O /dev/null http://$REG_GUEST/v2/bench/big/blobs/\$d || exit 1; done" >/dev/null \
        || { echo "bench: wget of the blobs failed"; return; }
    t1=$(date +%s%N); wget_ms=$(( (t1 - t0) / 1000000 ))
    aer free bwget >/dev/null
    t0=$(date +%s%N)
    aer --timeout 600 image pull "$REG_GUEST/bench/big:1" >/dev/null 2>&1 || { echo "bench: pull failed"; return; }
    t1=$(date +%s%N); pull_ms=$(( (t1 - t0) / 1000000 ))
    printf '%-44s %.1f MB/s (%d bytes in %d ms)\n' "raw download of the blobs, busybox wget" "$(echo "$big_bytes / 1000 / $wget_ms" | bc -l)" "$big_bytes" "$wget_ms"
    printf '%-44s %.1f MB/s (%d ms; %.2f of wget; goal >= 0.8)\n' "image pull + unpack, 4 layers ~64 MiB" "$(echo "$big_bytes / 1000 / $pull_ms" | bc -l)" "$pull_ms" "$(echo "$wget_ms / $pull_ms" | bc -l)"
    printf '%-44s %d KiB\n' "auraed RSS after the pulls and cells above" "$(aer --json node info | python3 -c 'import json,sys; print(json.load(sys.stdin)["auraed_rss_bytes"]//1024)')"
    aer image rm "$REG_GUEST/bench/big:1" >/dev/null
}

# The soak (issue #23): BENCH_SOAK_SECS (default 1800) of a hostile registry's attacks, a
# reader's List loop and normal pulls and cells, after a minute idle and a minute beside a
# reader's 256 Images.List streams. `auraed bench-soak` (init/src/bench/soak.rs, the bench
# layer's /bench/auraed) measures inside the node and prints each figure against its
# bound. The hostile registry
# (tests/soak/registry.py) listens on the host's loopback and is reached, like the
# registry above, through a guestfwd rule.
HOSTILE_GUEST=10.0.2.101:5001
hostile_port=$(free_port)
python3 "$here/tests/soak/registry.py" "$hostile_port" >/dev/null 2>&1 &
hostile_pid=$!
trap 'rm -f "$log"; kill $reg_pid $hostile_pid 2>/dev/null; rm -rf "$reg_dir"' EXIT
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $hostile_port), 1)" 2>/dev/null; do
    kill -0 $hostile_pid 2>/dev/null || { echo "bench: the hostile registry did not start"; exit 1; }
    sleep 0.2
done
soak_bench() {
    local secs=${BENCH_SOAK_SECS:-1800}
    echo
    echo "== soak (${secs} s; a hostile registry, a reader's List loop, normal pulls and cells; accel ${ACCEL:-tcg})"
    aer --timeout $((secs + 900)) exec benchsoak --cell benchhost -f -- /bench/auraed bench-soak \
        --config /etc/aurae/bench/aer.toml --reader-config /etc/aurae/bench/reader.toml \
        --secs "$secs" --phase-secs "${BENCH_SOAK_PHASE_SECS:-60}" \
        --image "$REG_GUEST/test/busybox:1" --hostile "$HOSTILE_GUEST" \
        || echo "bench: soak: a bound was broken or the soak failed (see above)"
    aer free benchsoak >/dev/null 2>&1 || true
}

if [ -f "$B/initramfs/bench.cpio.zst" ]; then
    BUILD=$B PORT=$port NO_REBOOT=1 ACCEL=${ACCEL:-tcg} MEM=2048M LAYERS="base pki toolbox boot bench" \
        GUESTFWD="tcp:$REG_GUEST-cmd:busybox nc 127.0.0.1 $reg_port|tcp:$HOSTILE_GUEST-cmd:busybox nc 127.0.0.1 $hostile_port" \
        EXTRA_CMDLINE="aurae.insecure_registries=$REG_GUEST,$HOSTILE_GUEST" \
        "$here/qemu/run" > "$log" 2>&1 &
    qpid=$!
    t0=$(date +%s)
    until aer --timeout 0.25 health >/dev/null 2>&1; do
        kill -0 $qpid 2>/dev/null || { echo "bench: QEMU exited"; cat "$log"; exit 1; }
        [ $(( $(date +%s) - t0 )) -lt 120 ] || { echo "bench: no SERVING in 120 s"; cat "$log"; kill $qpid; exit 1; }
        sleep 0.1
    done
    aer cell create benchhost --share net,mount,cgroup --privileged >/dev/null
    aer cell create benchnode --share pid,mount,net,ipc,uts,cgroup --privileged >/dev/null
    aer --timeout 300 image pull "$REG_GUEST/test/busybox:1" >/dev/null 2>&1 || echo "bench: pull of the busybox test image failed"
    # BENCH_PARTS picks parts of this boot (default all): runtime images vms pods cri soak;
    # and fleet and uefi, which boot machines of their own (below).
    parts=" ${BENCH_PARTS:-runtime images vms pods cri soak fleet uefi} "
    if [[ $parts == *" runtime "* ]]; then
        echo
        echo "== runtime (inside the appliance, accel ${ACCEL:-tcg}, ${BENCH_N:-100} samples each)"
        aer --timeout 1800 exec benchrun --cell benchhost -f -- /bench/auraed bench-runtime \
            --config /etc/aurae/bench/aer.toml --crun-bundle /bench/bundle --n "${BENCH_N:-100}" \
            --image "$REG_GUEST/test/busybox:1" --crun-image-bundle /bench/image-bundle \
            || { echo "bench: bench-runtime failed"; tail -50 "$log"; }
    fi
    [[ $parts == *" images "* ]] && image_bench
    [[ $parts == *" vms "* ]] && vm_bench
    [[ $parts == *" pods "* ]] && pod_bench
    if [[ $parts == *" cri "* ]]; then
        echo
        echo "== cri (inside the appliance over the API port as the admin; sandboxes nested microVMs, relist on cell sandboxes)"
        aer --timeout 1800 exec benchcri --cell benchhost -f -- /bench/auraed bench-cri \
            --config /etc/aurae/bench/aer.toml --image "$REG_GUEST/test/busybox:1" \
            --n "${BENCH_PODS:-5}" --relist-pods "${BENCH_RELIST_PODS:-20}" \
            || { echo "bench: bench-cri failed"; tail -50 "$log"; }
    fi
    [[ $parts == *" soak "* ]] && soak_bench
    node_down
    wait $qpid
fi

# A fleet booting over the network (issue #13): rootfs/pxe.sh's directory served by
# qemu/fleet (dnsmasq in a network namespace of its own), power-on -> health SERVING per
# node, for one machine and for three at once (how one boot server and these two cores
# take them).
# Waits until the fleet node at IP (inside netns NS) answers health. Fails, saying why, if
# the fleet (FPID, its log FLOG) ended or 300 s passed since T0.
fleet_node_serving() {
    local ns=$1 ip=$2 t0=$3 fpid=$4 flog=$5
    until ip netns exec "$ns" "$B/bin/aer" --addr "$ip:8443" --server-name localhost --ca "$B/pki/ca.crt" \
        --cert "$B/pki/client.crt" --key "$B/pki/client.key" --timeout 0.5 health >/dev/null 2>&1; do
        kill -0 "$fpid" 2>/dev/null || { echo "bench: the fleet ended before $ip served"; cat "$flog"; return 1; }
        [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 300 ] || { echo "bench: $ip not serving in 300 s"; return 1; }
        sleep 0.1
    done
}

fleet_bench() {
    local dir ns t0 t1 ip i count fpid ms one=() three=()
    dir=$(mktemp -d) && chmod 755 "$dir"   # dnsmasq serves the boot directory as nobody
    "$here/rootfs/pxe.sh" "$B" "$dir/boot" 52:54:00:b0:00:01=bench-1 52:54:00:b0:00:02=bench-2 \
        52:54:00:b0:00:03=bench-3 >/dev/null
    for count in 1 3; do
        ns=aurae-bench-$$-$count
        local args=()
        for i in $(seq 1 "$count"); do args+=("52:54:00:b0:00:0$i=10.44.0.1$i,bench-$i"); done
        t0=$(date +%s%N)
        BOOT_DIR=$dir/boot OUT=$dir/out-$count NETNS=$ns "$here/qemu/fleet" "${args[@]}" 2>"$dir/fleet-$count.log" &
        fpid=$!
        for i in $(seq 1 "$count"); do
            ip=10.44.0.1$i
            fleet_node_serving "$ns" "$ip" "$t0" $fpid "$dir/fleet-$count.log" || { kill $fpid 2>/dev/null; return; }
            t1=$(date +%s%N); ms=$(( (t1 - t0) / 1000000 ))
            if [ "$count" = 1 ]; then one+=($ms); else three+=($ms); fi
        done
        kill -TERM $fpid; wait $fpid 2>/dev/null || true
    done
    local per_node shared
    shared=$(cat "$dir/boot/bzImage" "$dir/boot/"*.cpio.zst | wc -c)
    per_node=$(stat -c %s "$dir/boot/nodes/52-54-00-b0-00-01.cpio.zst")
    echo
    echo "== fleet (PXE: QEMU's iPXE ROM, dnsmasq DHCP + TFTP, TCG, 1 vCPU and 512 MiB per machine)"
    printf '%-44s %s\n' "power-on -> SERVING, one machine (ms)" "${one[*]}"
    printf '%-44s %s\n' "power-on -> SERVING, three at once (ms)" "$(stats "${three[@]}")"
    printf '%-44s %d bytes shared (kernel + layers), %d per node (its pki layer)\n' "boot directory" "$shared" "$per_node"
    rm -rf "$dir"
}

# UEFI (issue #13): sizes of the metal kernel and the media `make uefi` makes, power-on ->
# health SERVING of the USB stick under OVMF (q35, e1000e, DHCP from QEMU), and of one
# machine booting ipxe.efi over the network under OVMF.
uefi_bench() {
    local t0 t1 qpid ms runs=() pxe=() dir ns fpid i
    [ -f "$B/uefi/usb.img" ] || { echo "bench: $B/uefi/usb.img missing (make uefi)"; return; }
    for i in 1 2 3; do
        t0=$(date +%s%N)
        BUILD=$B PORT=$port NO_REBOOT=1 ACCEL=tcg BOOT=uefi MACHINE=q35 "$here/qemu/run" > "$log" 2>&1 &
        qpid=$!
        until aer --timeout 0.5 health >/dev/null 2>&1; do
            kill -0 $qpid 2>/dev/null || { echo "bench: UEFI QEMU exited"; tail -20 "$log"; return; }
            [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 300 ] || { echo "bench: UEFI not serving in 300 s"; kill $qpid; return; }
            sleep 0.1
        done
        t1=$(date +%s%N); runs+=($(( (t1 - t0) / 1000000 )))
        node_down; wait $qpid || true
    done
    dir=$(mktemp -d) && chmod 755 "$dir"
    "$here/rootfs/pxe.sh" "$B" "$dir/boot" 52:54:00:b0:00:21=bench-1 >/dev/null
    for i in 1 2; do
        ns=aurae-bench-$$-uefi-$i
        t0=$(date +%s%N)
        BOOT_DIR=$dir/boot OUT=$dir/out-$i NETNS=$ns "$here/qemu/fleet" "52:54:00:b0:00:21=10.44.0.21,bench-1/uefi" 2>"$dir/fleet.log" &
        fpid=$!
        # A run that never served is reported as such, never as a time.
        if fleet_node_serving "$ns" 10.44.0.21 "$t0" $fpid "$dir/fleet.log"; then
            t1=$(date +%s%N); pxe+=($(( (t1 - t0) / 1000000 )))
        fi
        kill -TERM $fpid 2>/dev/null; wait $fpid 2>/dev/null || true
    done
    rm -rf "$dir"
    echo
    echo "== UEFI (OVMF, q35, TCG, 2 vCPU / 1 GiB from USB; 1 vCPU / 512 MiB over PXE)"
    printf '%-44s %s\n' "USB stick power-on -> SERVING (ms)" "$(stats "${runs[@]}")"
    printf '%-44s %s\n' "ipxe.efi PXE power-on -> SERVING (ms)" "$( [ ${#pxe[@]} -gt 0 ] && stats "${pxe[@]}" || echo "no run served (see above)")"
    printf '%-44s %d (minimal: %d)\n' "metal kernel bzImage (bytes)" "$(stat -c %s "$B/kernel-metal/bzImage")" "$(stat -c %s "$B/kernel/bzImage")"
    printf '%-44s %d\n' "UKI aurae.efi (bytes)" "$(stat -c %s "$B/uefi/aurae.efi")"
    printf '%-44s %d (zstd: %d)\n' "ESP image (bytes)" "$(stat -c %s "$B/uefi/esp.img")" "$(zstd -q -c "$B/uefi/esp.img" | wc -c)"
    printf '%-44s %d\n' "raw USB disk image (bytes)" "$(stat -c %s "$B/uefi/usb.img")"
}
parts=" ${BENCH_PARTS:-runtime images vms pods cri soak fleet uefi} "
[[ $parts == *" fleet "* ]] && fleet_bench
[[ $parts == *" uefi "* ]] && uefi_bench
exit 0
