#!/usr/bin/env python3
"""Offline checks of buildroot/, the BR2_EXTERNAL tree (no Buildroot source can be fetched
on the test machines).

    tests/buildroot/check.py BUILD_DIR      (kconfiglib on PYTHONPATH; `make test-buildroot`)

1. external.desc names the tree AURAE (so BR2_EXTERNAL_AURAE_PATH is what the tree uses).
2. kconfiglib parses the tree's Config.in under a stub of Buildroot's top level (the real
   names and types of the Buildroot symbols the defconfig sets, from Buildroot's own
   Config.in files), and the defconfig loads with no warning and every assignment takes
   effect (an unmet `depends on` would silently drop it).
3. The kernel configuration is the project's fragment: the defconfig selects the generated
   "aurae" defconfig, board/aurae/linux.mk names kernel/aurae.config (and metal.config),
   and both exist.
4. Every script the defconfig names exists, is executable and passes `bash -n` and
   shellcheck; every .mk that external.mk includes exists.
5. post-build.sh and post-image.sh, run as Buildroot runs them over this build's auraed,
   kernel and PKI, produce the same initramfs layers as `make image`, byte for byte; and
   post-image refuses a kernel .config that lost a fragment option.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import kconfiglib

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, "..", ".."))
TREE = os.path.join(TOP, "buildroot")
DEFCONFIG = os.path.join(TREE, "configs", "aurae_x86_64_defconfig")

# Buildroot's symbols the tree and its defconfig use, as Buildroot declares them
# (arch/Config.in, toolchain/, system/Config.in, package/busybox, fs/tar, linux/Config.in).
STUB = """
mainmenu "Buildroot (stub of the symbols Aurae's tree uses)"
config BR2_x86_64
\tbool "x86_64"
config BR2_TOOLCHAIN_BUILDROOT_MUSL
\tbool "musl"
config BR2_KERNEL_HEADERS_6_1
\tbool "Linux 6.1.x kernel headers"
choice
\tprompt "Init system"
config BR2_INIT_BUSYBOX
\tbool "BusyBox"
config BR2_INIT_NONE
\tbool "None"
endchoice
choice
\tprompt "/bin/sh"
config BR2_SYSTEM_BIN_SH_BUSYBOX
\tbool "busybox' default shell"
config BR2_SYSTEM_BIN_SH_NONE
\tbool "none"
endchoice
config BR2_PACKAGE_BUSYBOX
\tbool "BusyBox"
\tdefault y
config BR2_TARGET_ROOTFS_TAR
\tbool "tar the root filesystem"
\tdefault y
config BR2_ROOTFS_POST_BUILD_SCRIPT
\tstring "Custom scripts to run before creating filesystem images"
config BR2_ROOTFS_POST_IMAGE_SCRIPT
\tstring "Custom scripts to run after creating filesystem images"
config BR2_LINUX_KERNEL
\tbool "Linux Kernel"
if BR2_LINUX_KERNEL
choice
\tprompt "Kernel version"
config BR2_LINUX_KERNEL_LATEST_VERSION
\tbool "Latest version"
config BR2_LINUX_KERNEL_CUSTOM_TARBALL
\tbool "Custom tarball"
endchoice
config BR2_LINUX_KERNEL_CUSTOM_TARBALL_LOCATION
\tstring "URL of custom kernel tarball"
\tdepends on BR2_LINUX_KERNEL_CUSTOM_TARBALL
choice
\tprompt "Kernel configuration"
\tdefault BR2_LINUX_KERNEL_USE_DEFCONFIG
config BR2_LINUX_KERNEL_USE_DEFCONFIG
\tbool "Using an in-tree defconfig file"
config BR2_LINUX_KERNEL_USE_CUSTOM_CONFIG
\tbool "Using a custom (def)config file"
endchoice
config BR2_LINUX_KERNEL_DEFCONFIG
\tstring "Defconfig name"
\tdepends on BR2_LINUX_KERNEL_USE_DEFCONFIG
choice
\tprompt "Kernel binary format"
config BR2_LINUX_KERNEL_BZIMAGE
\tbool "bzImage"
\tdepends on BR2_x86_64
config BR2_LINUX_KERNEL_VMLINUX
\tbool "vmlinux"
endchoice
config BR2_LINUX_KERNEL_NEEDS_HOST_LIBELF
\tbool "Needs host libelf"
endif
menu "External options"
source "$BR2_EXTERNAL_AURAE_PATH/Config.in"
endmenu
"""

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def defconfig_assignments(path):
    """(symbol, value) for each line: value 'n' for '# X is not set', strings unquoted."""
    out = []
    for line in open(path):
        line = line.strip()
        m = re.match(r"^# (BR2_\w+) is not set$", line)
        if m:
            out.append((m.group(1), "n"))
            continue
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        out.append((name, value))
    return out


def main(build):
    # 1. external.desc
    desc = dict(
        l.split(":", 1) for l in open(os.path.join(TREE, "external.desc")).read().splitlines() if ":" in l
    )
    name = desc.get("name", "").strip()
    check(name == "AURAE", f"external.desc names the tree AURAE (got '{name}')")
    for f in open(os.path.join(TREE, "Config.in")).read(), open(os.path.join(TREE, "external.mk")).read():
        used = set(re.findall(r"BR2_EXTERNAL_(\w+?)_PATH", f))
        check(used <= {"AURAE"}, f"the tree uses only BR2_EXTERNAL_AURAE_PATH ({sorted(used)})")

    # 2. kconfiglib over a stub top level
    work = tempfile.mkdtemp(prefix="aurae-br-")
    try:
        stub = os.path.join(work, "Config.in")
        open(stub, "w").write(STUB)
        os.environ["BR2_EXTERNAL_AURAE_PATH"] = TREE
        # Buildroot's symbols carry their BR2_ prefix in Config.in: no CONFIG_ prefix.
        os.environ["CONFIG_"] = ""
        kconf = kconfiglib.Kconfig(stub, warn_to_stderr=False)
        check(not kconf.warnings, "Config.in parses without warnings" + "".join("\n     " + w for w in kconf.warnings))
        ours = [s for s in kconf.unique_defined_syms
                if os.path.abspath(s.nodes[0].filename).startswith(TREE + "/")]
        check(len(ours) >= 4, f"the tree defines its symbols ({', '.join(s.name for s in ours)})")
        kconf.warnings.clear()
        kconf.load_config(DEFCONFIG)
        check(not kconf.warnings, "the defconfig loads without warnings" + "".join("\n     " + w for w in kconf.warnings))
        for sym, want in defconfig_assignments(DEFCONFIG):
            got = kconf.syms[sym].str_value if sym in kconf.syms else None
            check(got == want, f"defconfig {sym}={want} takes effect (got {got})")
        check(kconf.syms["BR2_AURAE_KERNEL_MINIMAL"].str_value == "y", "the default kernel flavor is minimal")
        br2_config = os.path.join(work, ".config")
        kconf.write_config(br2_config)

        # 3. the kernel's configuration is the project's fragment
        linux_mk = open(os.path.join(TREE, "board", "aurae", "linux.mk")).read()
        check(kconf.syms["BR2_LINUX_KERNEL_DEFCONFIG"].str_value == "aurae", "the defconfig uses the generated 'aurae' kernel defconfig")
        for frag in ("aurae.config", "metal.config"):
            ref = f"$(BR2_EXTERNAL_AURAE_PATH)/../kernel/{frag}"
            check(ref in linux_mk and os.path.isfile(os.path.join(TREE, "..", "kernel", frag)), f"board/aurae/linux.mk merges {ref}, which exists")
        check("tinyconfig" in linux_mk and "merge_config.sh -n" in linux_mk, "linux.mk starts from tinyconfig and merges in allnoconfig mode, as kernel/build.sh")
        check("arch/x86/configs/aurae_defconfig" in linux_mk, "linux.mk writes the 'aurae' defconfig")

        # 4. scripts and makefiles
        scripts = []
        for sym in ("BR2_ROOTFS_POST_BUILD_SCRIPT", "BR2_ROOTFS_POST_IMAGE_SCRIPT"):
            for s in kconf.syms[sym].str_value.split():
                path = s.replace("$(BR2_EXTERNAL_AURAE_PATH)", TREE)
                scripts.append(path)
                check(os.path.isfile(path) and os.access(path, os.X_OK), f"{sym} {s} exists and is executable")
        for path in scripts:
            r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
            check(r.returncode == 0, f"bash -n {os.path.relpath(path, TOP)} {r.stderr.strip()}")
            r = subprocess.run(["shellcheck", "-S", "warning", path], capture_output=True, text=True)
            check(r.returncode == 0, f"shellcheck {os.path.relpath(path, TOP)}" + ("\n" + r.stdout if r.returncode else ""))
        for mk in re.findall(r"^include (\S+)$", open(os.path.join(TREE, "external.mk")).read(), re.M):
            if "wildcard" in mk:
                continue
            path = mk.replace("$(BR2_EXTERNAL_AURAE_PATH)", TREE)
            check(os.path.isfile(path), f"external.mk includes {mk}, which exists")
        pkgs = [d for d in os.listdir(os.path.join(TREE, "package"))]
        for p in pkgs:
            mkf = os.path.join(TREE, "package", p, p + ".mk")
            text = open(mkf).read() if os.path.isfile(mkf) else ""
            check(re.search(r"^\$\(eval \$\((generic|cargo)-package\)\)$", text, re.M) is not None, f"package/{p}/{p}.mk defines a package")

        # 5. post-build and post-image over this build, as Buildroot would run them
        if len(scripts) != 2:
            check(False, "the defconfig names one post-build and one post-image script")
            return 1
        images = os.path.join(work, "images")
        target = os.path.join(work, "target")
        brbuild = os.path.join(work, "build")
        os.makedirs(os.path.join(target, "usr", "sbin"))
        os.makedirs(images)
        os.makedirs(os.path.join(brbuild, "linux-custom"))
        shutil.copy(os.path.join(build, "bin", "auraed"), os.path.join(target, "usr", "sbin", "auraed"))
        shutil.copy(os.path.join(build, "kernel", "bzImage"), os.path.join(images, "bzImage"))
        shutil.copy(os.path.join(build, "kernel", "config"), os.path.join(brbuild, "linux-custom", ".config"))
        shutil.copy(os.path.join(TOP, "kernel", "aurae.config"), os.path.join(brbuild, "linux-custom", ".aurae-fragments"))
        # The deployment's PKI: this build's (so the pki layer can be compared too).
        text = open(br2_config).read().replace(
            'BR2_AURAE_PKI_DIR="$(BR2_EXTERNAL_AURAE_PATH)/../build/pki"', f'BR2_AURAE_PKI_DIR="{build}/pki"')
        open(br2_config, "w").write(text)
        env = dict(os.environ, BINARIES_DIR=images, TARGET_DIR=target, BUILD_DIR=brbuild,
                   BR2_CONFIG=br2_config, BR2_EXTERNAL_AURAE_PATH=TREE)
        r = subprocess.run([scripts[0], target], env=env, capture_output=True, text=True)
        check(r.returncode == 0, "post-build.sh accepts the static auraed " + r.stderr.strip())
        r = subprocess.run([scripts[1], images], env=env, capture_output=True, text=True)
        check(r.returncode == 0, "post-image.sh runs " + (r.stderr.strip() if r.returncode else ""))
        for layer in ("base", "pki", "toolbox", "boot"):
            a = os.path.join(images, layer + ".cpio.zst")
            b = os.path.join(build, "initramfs", layer + ".cpio.zst")
            same = os.path.isfile(a) and open(a, "rb").read() == open(b, "rb").read()
            check(same, f"post-image's {layer} layer is make image's, byte for byte")
        whole = os.path.join(images, "aurae-initramfs.cpio.zst")
        check(os.path.isfile(whole) and oct(os.stat(whole).st_mode & 0o777) == "0o600", "aurae-initramfs.cpio.zst (holds the node key) is mode 0600")
        # A kernel whose configuration lost an option of the fragment is refused.
        cfg = os.path.join(brbuild, "linux-custom", ".config")
        text = open(cfg).read()
        open(cfg, "w").write(text.replace("CONFIG_KVM=y\n", "# CONFIG_KVM is not set\n"))
        r = subprocess.run([scripts[1], images], env=env, capture_output=True, text=True)
        check(r.returncode != 0 and "CONFIG_KVM=y" in r.stderr, "post-image refuses a kernel that lost CONFIG_KVM=y: " + r.stderr.strip())
        # A dynamically linked auraed is refused by post-build.
        shutil.copy("/bin/true", os.path.join(target, "usr", "sbin", "auraed"))
        r = subprocess.run([scripts[0], target], env=env, capture_output=True, text=True)
        check(r.returncode != 0 and "dynamically linked" in r.stderr, "post-build refuses a dynamically linked auraed")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"buildroot: {'FAILED ' + str(len(failures)) + ' check(s)' if failures else 'all checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, "build"))))
