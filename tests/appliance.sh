#!/usr/bin/env bash
# The appliance tier: every test binary of tests/ (the aurae-appliance-tests crate), each
# against the real image under QEMU, in two lanes side by side.
#
# Why lanes: a TCG guest waits much of the time (timers, its own boot, the host's
# registry), and one binary at a time left this 2-core machine two-thirds idle. Two
# binaries at once keep both cores busy; each binary still runs its own tests one at a
# time, and every test scales its budgets to a boot it measured (under the same load).
# Each lane takes the next binary from one queue, longest first (the order below, from
# measured times), so the lanes end close together. A binary not named in the order runs
# last: a new one is never left out.
#
# Each lane's loopback ports have the lane's parity (AURAE_PORT_LANE, see free_port), so
# two QEMUs never get one forward. Each binary's output goes to BUILD/appliance/NAME.log
# and is printed whole when the binary ends.
#
# Usage: tests/appliance.sh BUILD_DIR [LANES]
set -euo pipefail
BUILD=$(realpath "${1:?usage: tests/appliance.sh BUILD_DIR [LANES]}")
LANES=${2:-2}
cd "$(dirname "$0")"
ORDER=(pods spawn fleet executables appliance images uefi vms cells)

# Build once, and learn where each test binary is.
bins=$(cargo test --locked -p aurae-appliance-tests --no-run --message-format=json-render-diagnostics |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
')
declare -A path
while read -r name exe; do path[$name]=$exe; done <<< "$bins"

logs=$BUILD/appliance
rm -rf "$logs"
mkdir -p "$logs"
queue=$logs/queue
: > "$queue"
for name in "${ORDER[@]}"; do [ -n "${path[$name]:-}" ] && echo "$name" >> "$queue"; done
for name in $(printf '%s\n' "${!path[@]}" | sort); do grep -qx "$name" "$queue" || echo "$name" >> "$queue"; done
echo "appliance: $(wc -l < "$queue") test binaries in $LANES lanes: $(tr '\n' ' ' < "$queue")"

# Pops the queue's first line (under a lock: two lanes share it).
take() {
    exec {fd}>> "$queue.lock"
    flock "$fd"
    local next
    next=$(head -n1 "$queue")
    [ -n "$next" ] && sed -i 1d "$queue"
    exec {fd}>&-
    [ -n "$next" ] && echo "$next"
}

lane() {
    local lane=$1 name t rc failed=0
    while name=$(take); do
        t=$(date +%s)
        rc=0
        AURAE_APPLIANCE=$BUILD AURAE_PORT_LANE=$lane/$LANES RUST_BACKTRACE=1 \
            "${path[$name]}" --test-threads=1 --nocapture > "$logs/$name.log" 2>&1 || rc=$?
        {
            flock 9
            echo "===== appliance: $name (lane $lane) ====="
            cat "$logs/$name.log"
            echo "===== appliance: $name $([ $rc = 0 ] && echo passed || echo "FAILED (exit $rc)") in $(( $(date +%s) - t )) s ====="
        } 9>> "$logs/print.lock"
        echo "$name $rc $(( $(date +%s) - t ))" >> "$logs/results"
        [ $rc = 0 ] || failed=1
    done
    return $failed
}

pids=()
for ((i = 0; i < LANES; i++)); do
    lane "$i" &
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
echo "appliance: per binary (name, exit code, seconds):"
sort -k3 -n -r "$logs/results" | sed 's/^/  /'
if [ $failed != 0 ]; then
    echo "appliance: FAILED: $(awk '$2 != 0 {print $1}' "$logs/results" | tr '\n' ' ')(logs in $logs)" >&2
    exit 1
fi
