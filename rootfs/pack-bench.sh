#!/usr/bin/env bash
# Packs the bench-only layer BUILD_DIR/initramfs/bench.cpio.zst: auraed built with the bench
# drivers (/bench/auraed), crun with its shared libraries (the baseline `make bench`
# compares cells against), an OCI bundle that runs /bin/true, and admin and reader client
# certificates so the bench clients can run inside the node.
# Never part of the appliance image.
#   rootfs/pack-bench.sh BUILD_DIR
set -euo pipefail
B=$(cd "${1:?usage: pack-bench.sh BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
crun=$(command -v crun || true)
[ -n "$crun" ] || { echo "pack-bench: crun missing (apt-get install crun)" >&2; exit 1; }
stage=$B/bench; rm -rf "$stage"; mkdir -p "$stage/lib" "$stage/bundle"
spec=$B/initramfs/bench.spec
# The bench drivers (`auraed bench-runtime`, `auraed bench-soak`) live in a second build of
# auraed with the `bench` feature, so the appliance's own auraed carries none of them.
"$here/../init/build-static.sh" "$stage/bin" bench >&2
{
    for d in /usr /usr/bin /lib /lib/x86_64-linux-gnu /lib64 /bench /bench/bundle /bench/bundle/rootfs \
             /bench/bundle/rootfs/bin /bench/bundle/rootfs/proc /bench/bundle/rootfs/dev \
             /bench/bundle/rootfs/sys /bench/bundle/rootfs/tmp /etc /etc/aurae /etc/aurae/bench; do
        echo "dir $d 0755 0 0"
    done
    echo "file /bench/auraed bench/bin/auraed 0755 0 0"
    cp "$crun" "$stage/crun"; echo "file /usr/bin/crun bench/crun 0755 0 0"
    for lib in $(ldd "$crun" | awk '/=>/ {print $3} /^\t\/lib64/ {print $1}' | sort -u); do
        real=$(readlink -f "$lib"); n=$(basename "$lib")
        cp "$real" "$stage/lib/$n"
        case "$lib" in /lib64/*) echo "file /lib64/$n bench/lib/$n 0755 0 0" ;;
                       *) echo "file /lib/x86_64-linux-gnu/$n bench/lib/$n 0755 0 0" ;; esac
    done
    cp /bin/busybox "$stage/busybox"
    echo "file /bench/bundle/rootfs/bin/busybox bench/busybox 0755 0 0"
    echo "slink /bench/bundle/rootfs/bin/true busybox 0777 0 0"
    (cd "$stage/bundle" && "$crun" spec)
    # crun gets what a default cell gets: pivot_root and a read-only root, OCI's masked and
    # read-only paths (crun spec's defaults), the same capabilities, no_new_privs, and the
    # same seccomp allow-list (the names read from auraed's own table).
    python3 - "$stage/bundle/config.json" "$here/../init/src/runtime/confine/seccomp.rs" <<'PY'
import json, re, sys
p, table = sys.argv[1], open(sys.argv[2]).read()
always = table[table.index("const ALWAYS:"):table.index("const ALWAYS_BY_NUMBER")]
names = sorted(set(re.findall(r"SYS_(\w+)", always)) | {"io_pgetevents"})
c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]; c["process"]["terminal"] = False
c["process"]["noNewPrivileges"] = True
caps = ["CAP_" + n for n in ("CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP "
        "NET_BIND_SERVICE NET_RAW SYS_CHROOT AUDIT_WRITE SETFCAP").split()]
c["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
c["root"] = {"path": "rootfs", "readonly": True}
c["linux"]["cgroupsPath"] = "/crunbench"
c["linux"]["seccomp"] = {
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [
        {"names": names, "action": "SCMP_ACT_ALLOW"},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["chroot", "socket", "personality"], "action": "SCMP_ACT_ALLOW"},
    ]}
json.dump(c, open(p, "w"), indent=1, sort_keys=True)
PY
    echo "file /bench/bundle/config.json bench/bundle/config.json 0644 0 0"
    # The busybox test image the bench's registry serves, unpacked for crun: the baseline
    # of cells from that image (which come from the node's store). Same confinement as the
    # bundle above; its root writable, as an image cell's is.
    "$here/../tests/images/build.sh" "$B/test-images" >&2
    umoci unpack --image "$B/test-images/layout:busybox" "$stage/image-bundle" >&2
    python3 - "$stage/bundle/config.json" "$stage/image-bundle" <<'PY'
import json, os, stat, sys
c = json.load(open(sys.argv[1]))
c["root"] = {"path": "rootfs", "readonly": False}
c["linux"]["cgroupsPath"] = "/crunbench-img"
b = sys.argv[2]
json.dump(c, open(os.path.join(b, "config.json"), "w"), indent=1, sort_keys=True)
print("dir /bench/image-bundle 0755 0 0")
print("file /bench/image-bundle/config.json bench/image-bundle/config.json 0644 0 0")
root = os.path.join(b, "rootfs")
for d, dirs, files in os.walk(root):
    rel = os.path.relpath(d, root)
    dest = "/bench/image-bundle/rootfs" + ("" if rel == "." else "/" + rel)
    st = os.lstat(d)
    print(f"dir {dest} {stat.S_IMODE(st.st_mode):o} {st.st_uid} {st.st_gid}")
    for n in sorted(files + [x for x in dirs if os.path.islink(os.path.join(d, x))]):
        p = os.path.join(d, n)
        st = os.lstat(p)
        src = os.path.relpath(p, os.path.dirname(os.path.dirname(b)))
        if stat.S_ISLNK(st.st_mode):
            print(f"slink {dest}/{n} {os.readlink(p)} 0777 {st.st_uid} {st.st_gid}")
        elif stat.S_ISREG(st.st_mode):
            print(f"file {dest}/{n} {src} {stat.S_IMODE(st.st_mode):o} {st.st_uid} {st.st_gid}")
PY
    for f in ca.crt client.crt client.key; do echo "file /etc/aurae/bench/$f pki/$f 0600 0 0"; done
    printf 'address = "127.0.0.1:8443"\nca = "ca.crt"\ncert = "client.crt"\nkey = "client.key"\nserver_name = "localhost"\n' > "$stage/aer.toml"
    echo "file /etc/aurae/bench/aer.toml bench/aer.toml 0644 0 0"
    # A reader for the soak's List loops: its certificate, and the node's policy with the
    # reader granted (this layer's policy.toml replaces the pki layer's).
    cp -a "$B/pki" "$stage/pki"
    "$B/bin/auraed" pki client "$stage/pki" bench-reader --role reader >&2
    for f in bench-reader.crt bench-reader.key; do echo "file /etc/aurae/bench/$f bench/pki/$f 0600 0 0"; done
    echo "dir /etc/aurae/pki 0700 0 0"
    echo "file /etc/aurae/pki/policy.toml bench/pki/policy.toml 0644 0 0"
    printf 'address = "127.0.0.1:8443"\nca = "ca.crt"\ncert = "bench-reader.crt"\nkey = "bench-reader.key"\nserver_name = "localhost"\n' > "$stage/reader.toml"
    echo "file /etc/aurae/bench/reader.toml bench/reader.toml 0644 0 0"
} > "$spec"
"$B/bin/auraed" mkcpio --base "$B" "$spec" "$B/initramfs/bench.cpio"
zstd -q -19 -T0 --no-check -f "$B/initramfs/bench.cpio" -o "$B/initramfs/bench.cpio.zst" && rm -f "$B/initramfs/bench.cpio"
# It holds a client key: 0600 like the pki layer.
chmod 600 "$B/initramfs/bench.cpio.zst"
echo "rootfs: bench    $(stat -c %s "$B/initramfs/bench.cpio.zst") bytes (crun $("$crun" --version | head -1 | cut -d' ' -f3), bench only)"
