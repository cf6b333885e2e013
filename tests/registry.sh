# shellcheck shell=bash
# Sourced by bench.sh and soak.sh: a real OCI registry (docker-registry) on this machine's
# loopback, on a free port, its storage in a directory of its own. Sets reg_dir, reg_port
# and reg_pid; the caller stops it (kill $reg_pid; rm -rf "$reg_dir") and waits for it with
# registry_ready.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
reg_dir=$(mktemp -d)
reg_port=$(free_port)
printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$reg_dir/storage" "$reg_port" > "$reg_dir/config.yml"
docker-registry serve "$reg_dir/config.yml" >/dev/null 2>&1 &
reg_pid=$!
registry_ready() {
    until python3 -c "import socket; socket.create_connection(('127.0.0.1', $reg_port), 1)" 2>/dev/null; do
        kill -0 "$reg_pid" 2>/dev/null || { echo "the registry did not start" >&2; return 1; }
        sleep 0.1
    done
}
