#!/usr/bin/env python3
"""Structure rules for init/src that rustc and clippy do not check (make lint runs this).

1. No `Result<_, String>` in non-test code: errors are typed by cause.
2. `unsafe` only in the wrapper modules named in UNSAFE_HOMES, each with its reason.
3. No `impl Runtime` outside runtime/mod.rs (the façade, one method per rpc) and no
   `impl Host` outside runtime/host.rs: kinds own their lifecycles and borrow the Host.
4. No file over MAX_LINES non-test lines.
5. No module imports a module that imports it back: top-level modules of the crate, and
   any two files (a parent module and its own children aside: a parent re-exports and
   declares them).
6. No libc wrapper that acts on every thread of the process (setuid, setgid, setgroups
   and kin: libc signals each thread to run the change) in the code a clone3 child runs
   in auraed's memory (CLONE_CHILD_CODE): there "every thread" is auraed's. Raw system
   calls only.

Rules not yet met by the whole tree carry a list of today's exceptions (PENDING below). The
list may only shrink: a new violation fails, and so does an exception that no longer
violates (remove it from the list).
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "init", "src")
MAX_LINES = 600

# Where unsafe code may live, and why. Paths are relative to init/src.
UNSAFE_HOMES = {
    "os/mod.rs": "single system calls with no safe wrapper (SIGPIPE, an I/O port)",
    "os/tty.rs": "pseudo-terminal ioctls and a terminal master on the async reactor",
    "runtime/sys/mod.rs": "pidfds: open one and signal through it",
    "runtime/sys/child.rs": "what a new child does between clone3 and exec (async-signal-safe)",
    "runtime/sys/start.rs": "clone3 on a stack of its own, and threads that join a cell's namespaces to start a process in it",
    "net/ioctl.rs": "interface ioctls (addresses, flags, TAPs) with no safe wrapper",
    "net/netlink.rs": "a raw netlink socket for routes and links",
    "vmm/builder.rs": "KVM: the files auraed passed, the VM's ioctls",
    "vmm/memory.rs": "guest memory mapped into KVM",
    "vmm/jail.rs": "the VMM's jail: capability drops, no_new_privs, its seccomp filter",
    "vmm/protocol.rs": "descriptors the VMM receives from auraed (SCM_RIGHTS, fd 3)",
    "vmm/snapshot/kvm.rs": "KVM_SET_XSAVE (kvm-ioctls marks it unsafe: the kernel reads the whole struct)",
}

# Code that runs in a CLONE_VM child, sharing auraed's memory and threads' bookkeeping.
CLONE_CHILD_CODE = {"runtime/sys/child.rs"}
ALL_THREADS = re.compile(r"\blibc::(setuid|setgid|setgroups|setresuid|setresgid|setreuid|setregid|seteuid|setegid)\s*\(")

# Today's exceptions, by rule. Each must still be a violation (or the lint fails: remove it).
PENDING = {
    "string-errors": set(),
    "unsafe": set(),
    "impl-host": set(),
    "impl-runtime": set(),
    "long-files": set(),
    "cycles": set(),
    "file-cycles": set(),
    "all-threads": set(),
}


def strip_tests(text):
    """The file without `#[cfg(test)]` items (a test module or function) and without
    comments' contents, so only the code that ships is counted."""
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]":
            # Skip the attribute and the item after it, by brace depth.
            depth = 0
            opened = False
            i += 1
            while i < len(lines):
                code = re.sub(r"//.*", "", lines[i])
                code = re.sub(r'"(\\.|[^"\\])*"', '""', code)
                depth += code.count("{") - code.count("}")
                if "{" in code:
                    opened = True
                i += 1
                if opened and depth <= 0:
                    break
                if not opened and code.rstrip().endswith(";"):
                    break
            continue
        out.append(lines[i])
        i += 1
    return out


def rust_files():
    for dirpath, _, files in os.walk(ROOT):
        for f in sorted(files):
            if f.endswith(".rs"):
                full = os.path.join(dirpath, f)
                rel = os.path.relpath(full, ROOT)
                if rel == "tests.rs" or rel.endswith("/tests.rs") or "/tests/" in rel:
                    continue
                yield rel, full


def code_only(line):
    line = re.sub(r"//.*", "", line)
    return re.sub(r'"(\\.|[^"\\])*"', '""', line)


def string_error(code):
    """Whether some `Result<T, String>` appears: the second top-level type argument of a
    `Result<` is exactly `String`."""
    for m in re.finditer(r"\bResult<", code):
        depth, args, cur = 1, [], ""
        for ch in code[m.end():]:
            if ch in "<([":
                depth += 1
            elif ch in ">)]":
                depth -= 1
                if depth == 0:
                    break
            if ch == "," and depth == 1:
                args.append(cur)
                cur = ""
            else:
                cur += ch
        args.append(cur)
        if len(args) == 2 and args[1].strip() == "String":
            return True
    return False


def top_module(rel):
    head = rel.split("/")[0]
    return head[:-3] if head.endswith(".rs") else head


def module_of(rel):
    """`runtime/cell/mod.rs` -> ("runtime", "cell"); `lib.rs`/`main.rs` -> ()."""
    parts = rel[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    return () if parts in (["lib"], ["main"]) else tuple(parts)


def file_imports(me, code, modules):
    """The modules (files) that `code`, in module `me`, names through crate::, super:: or
    self:: paths, plain or grouped (`use super::{a, b::c}`)."""
    found = set()

    def resolve(base, path):
        for k in range(len(path), 0, -1):
            if tuple(base + path[:k]) in modules:
                found.add(tuple(base + path[:k]))
                return

    def base_of(head):
        if head == "crate":
            return []
        if head == "self":
            return list(me)
        ups = head.count("super")
        return list(me[: len(me) - ups])

    head_re = r"\b(crate|self|super(?:::super)*)"
    for m in re.finditer(head_re + r"((?:::\w+)+)", code):
        resolve(base_of(m.group(1)), m.group(2).split("::")[1:])
    for m in re.finditer(head_re + r"((?:::\w+)*)::\{([^{}]*)\}", code):
        base = base_of(m.group(1)) + [x for x in m.group(2).split("::") if x]
        for entry in m.group(3).split(","):
            path = re.findall(r"\w+", entry.split(" as ")[0])
            if path and path[0] != "self":
                resolve(base, path)
            else:
                resolve(base, [])
    found.discard(tuple(me))
    return found


def main():
    found = {k: set() for k in PENDING}
    imports = {}
    for rel, full in rust_files():
        with open(full, encoding="utf-8") as fh:
            text = fh.read()
        body = strip_tests(text)
        if len(body) > MAX_LINES:
            found["long-files"].add(rel)
        code = "\n".join(code_only(l) for l in body)
        if string_error(code):
            found["string-errors"].add(rel)
        if re.search(r"\bunsafe\b", code) and rel not in UNSAFE_HOMES:
            found["unsafe"].add(rel)
        if re.search(r"^\s*impl\s+Runtime\s*\{", code, re.M) and rel != "runtime/mod.rs":
            found["impl-runtime"].add(rel)
        if re.search(r"^\s*impl\s+Host\s*\{", code, re.M) and rel != "runtime/host.rs":
            found["impl-host"].add(rel)
        if rel in CLONE_CHILD_CODE and ALL_THREADS.search(code):
            found["all-threads"].add(rel)
        me = top_module(rel)
        for m in re.finditer(r"\bcrate::(\w+)", code):
            if m.group(1) != me:
                imports.setdefault(me, set()).add(m.group(1))
        # `use crate::{a, b::c}` groups
        for m in re.finditer(r"\bcrate::\{([^}]*)\}", code, re.S):
            for part in re.findall(r"(?:^|,)\s*(\w+)", m.group(1)):
                if part != me:
                    imports.setdefault(me, set()).add(part)
    files = {module_of(rel): full for rel, full in rust_files()}
    edges = {}
    for me, full in files.items():
        with open(full, encoding="utf-8") as fh:
            code = "\n".join(code_only(l) for l in strip_tests(fh.read()))
        edges[me] = file_imports(me, code, files)
    for a in sorted(edges):
        for b in sorted(edges[a]):
            related = a[: len(b)] == b or b[: len(a)] == a
            if a < b and not related and a in edges.get(b, set()):
                found["file-cycles"].add(f"{'/'.join(a)}<->{'/'.join(b)}")
    modules = {top_module(rel) for rel, _ in rust_files()}
    for a in sorted(imports):
        for b in sorted(imports[a]):
            if b in modules and a < b and a in imports.get(b, set()):
                found["cycles"].add(f"{a}<->{b}")

    failed = False
    for rule, have in found.items():
        allowed = PENDING[rule]
        for v in sorted(have - allowed):
            print(f"structure: {rule}: {v}", file=sys.stderr)
            failed = True
        for v in sorted(allowed - have):
            print(f"structure: {rule}: {v} is listed as pending but no longer violates: "
                  f"remove it from PENDING in {__file__}", file=sys.stderr)
            failed = True
    for rule, allowed in PENDING.items():
        if allowed:
            print(f"structure: {rule}: {len(allowed)} pending")
    for rel in sorted(UNSAFE_HOMES):
        if not os.path.exists(os.path.join(ROOT, rel)):
            print(f"structure: unsafe home {rel} does not exist", file=sys.stderr)
            failed = True
    if failed:
        sys.exit(1)
    print("structure: ok")


if __name__ == "__main__":
    main()
