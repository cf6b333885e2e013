//! Classic-BPF seccomp programs shaped as a balanced binary search over system-call
//! numbers. A row of comparisons (what general filter compilers emit, one per rule) costs
//! ~1500 instructions for Docker's ~300 calls, and the kernel runs a new filter once for
//! every system-call number when it is installed (to build its action cache): 1 ms per
//! exec natively, ~7 ms under TCG. A tree decides any call in about 20 instructions.

/// `struct sock_filter` (include/uapi/linux/filter.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const RET: u16 = 0x06; // BPF_RET | BPF_K

pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// SIGSYS to the caller, whose handler can say which call it was.
pub const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// System calls of the x32 ABI carry this bit.
const X32_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`: nr, arch, then the arguments (low half first).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0: u32 = 16;
/// Calls tested one after another at the bottom of the tree.
const LEAF: usize = 4;

/// The `struct sock_fprog` that seccomp(2) takes for `prog`; `prog` must outlive its use.
/// (`Insn` has `struct sock_filter`'s layout.)
pub fn fprog(prog: &[Insn]) -> libc::sock_fprog {
    libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    }
}

pub fn ret_errno(errno: u16) -> u32 {
    RET_ERRNO | u32::from(errno)
}

/// What a call gets; conditions read the low 32 bits of its first argument, except
/// `ArgOneOf`, which names the argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Errno(u16),
    /// Allowed when none of these bits is set.
    AllowIfClear(u32),
    /// Allowed unless it equals this.
    AllowIfNot(u32),
    /// Allowed when it is one of these.
    AllowIfOneOf(&'static [u32]),
    /// Allowed when argument `.0` is one of these.
    ArgOneOf(u8, &'static [u32]),
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// The instructions that end a call with `v` (`deny` for a condition not met).
fn action(v: Verdict, deny: u32) -> Vec<Insn> {
    let ld = stmt(LD_ABS, OFF_ARG0);
    match v {
        Verdict::Allow => vec![stmt(RET, RET_ALLOW)],
        Verdict::Errno(e) => vec![stmt(RET, ret_errno(e))],
        Verdict::AllowIfClear(mask) => vec![ld, jump(JSET, mask, 1, 0), stmt(RET, RET_ALLOW), stmt(RET, deny)],
        Verdict::AllowIfNot(value) => vec![ld, jump(JEQ, value, 1, 0), stmt(RET, RET_ALLOW), stmt(RET, deny)],
        Verdict::AllowIfOneOf(values) => action(Verdict::ArgOneOf(0, values), deny),
        Verdict::ArgOneOf(arg, values) => {
            // n comparisons, then deny at n, allow at n + 1.
            let n = values.len();
            let mut v = vec![stmt(LD_ABS, OFF_ARG0 + 8 * u32::from(arg))];
            for (i, value) in values.iter().enumerate() {
                v.push(jump(JEQ, *value, (n - i) as u8, 0));
            }
            v.push(stmt(RET, deny));
            v.push(stmt(RET, RET_ALLOW));
            v
        }
    }
}

/// The tree over `rules` (sorted by number): `jge` on the middle number, the left half
/// first; a long left half is jumped over with `ja` (conditional jumps reach 255 at most).
fn node(rules: &[(u32, Verdict)], deny: u32) -> Vec<Insn> {
    if rules.len() <= LEAF {
        let mut v = Vec::new();
        for (nr, verdict) in rules {
            let block = action(*verdict, deny);
            v.push(jump(JEQ, *nr, 0, block.len() as u8));
            v.extend(block);
        }
        v.push(stmt(RET, deny));
        return v;
    }
    let mid = rules.len() / 2;
    let (left, right) = (node(&rules[..mid], deny), node(&rules[mid..], deny));
    let pivot = rules[mid].0;
    let mut v = match u8::try_from(left.len()) {
        Ok(skip) => vec![jump(JGE, pivot, skip, 0)],
        Err(_) => vec![jump(JGE, pivot, 0, 1), stmt(JA, left.len() as u32)],
    };
    v.extend(left);
    v.extend(right);
    v
}

/// A filter for x86_64: another architecture is killed, an x32 call or one not in `rules`
/// gets `deny` (a `ret` value, e.g. `ret_errno(EPERM)`).
pub fn compile(mut rules: Vec<(u32, Verdict)>, deny: u32) -> Vec<Insn> {
    rules.sort_by_key(|(nr, _)| *nr);
    rules.dedup_by_key(|(nr, _)| *nr);
    let mut v = vec![
        stmt(LD_ABS, OFF_ARCH),
        jump(JEQ, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET, RET_KILL_PROCESS),
        stmt(LD_ABS, OFF_NR),
        jump(JGE, X32_BIT, 0, 1),
        stmt(RET, deny),
    ];
    v.extend(node(&rules, deny));
    v
}

/// Runs `prog` the way the kernel does, on a call (number, architecture, first argument):
/// its verdict and how many instructions it ran. For tests; it refuses anything `compile`
/// does not emit.
#[cfg(test)]
pub fn run(prog: &[Insn], nr: u32, arch: u32, arg0: u64) -> (u32, usize) {
    run_args(prog, nr, arch, [arg0, 0])
}

/// `run` with the first two arguments.
#[cfg(test)]
pub fn run_args(prog: &[Insn], nr: u32, arch: u32, args: [u64; 2]) -> (u32, usize) {
    let mut pc = 0usize;
    let mut a = 0u32;
    let mut steps = 0;
    loop {
        let i = prog[pc];
        pc += 1;
        steps += 1;
        match i.code {
            LD_ABS => {
                a = match i.k {
                    OFF_NR => nr,
                    OFF_ARCH => arch,
                    OFF_ARG0 => args[0] as u32,
                    k if k == OFF_ARG0 + 8 => args[1] as u32,
                    k => panic!("load at {k}"),
                }
            }
            JA => pc += i.k as usize,
            JEQ | JGE | JSET => {
                let taken = match i.code {
                    JEQ => a == i.k,
                    JGE => a >= i.k,
                    _ => a & i.k != 0,
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            RET => return (i.k, steps),
            c => panic!("opcode {c:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENY: u32 = RET_ERRNO | 1;

    #[test]
    fn every_call_gets_exactly_its_verdict_through_the_tree() {
        // 300 allowed calls spread over 0..600, and one of each condition.
        let mut rules: Vec<(u32, Verdict)> = (0..300).map(|i| (i * 2, Verdict::Allow)).collect();
        rules.push((101, Verdict::AllowIfClear(0x7e02_0000)));
        rules.push((103, Verdict::AllowIfNot(40)));
        rules.push((105, Verdict::AllowIfOneOf(&[0, 8, 0xffff_ffff])));
        rules.push((107, Verdict::Errno(38)));
        rules.push((109, Verdict::ArgOneOf(1, &[0xae80])));
        let prog = compile(rules, DENY);
        assert!(prog.len() < 1000, "{}", prog.len());
        let x86 = AUDIT_ARCH_X86_64;
        for nr in 0..700u32 {
            let want = match nr {
                101 | 103 | 105 | 109 => continue,
                107 => RET_ERRNO | 38,
                n if n % 2 == 0 && n < 600 => RET_ALLOW,
                _ => DENY,
            };
            assert_eq!(run(&prog, nr, x86, 0).0, want, "nr {nr}");
            assert_eq!(run(&prog, nr | X32_BIT, x86, 0).0, DENY, "x32 {nr}");
            assert_eq!(run(&prog, nr, 0x4000_0003, 0).0, RET_KILL_PROCESS, "i386 {nr}");
        }
        assert_eq!(run(&prog, 101, x86, 0x11).0, RET_ALLOW);
        assert_eq!(run(&prog, 101, x86, 0x1000_0000).0, DENY, "CLONE_NEWUSER");
        assert_eq!(run(&prog, 103, x86, 2).0, RET_ALLOW);
        assert_eq!(run_args(&prog, 109, x86, [7, 0xae80]).0, RET_ALLOW, "KVM_RUN on any fd");
        assert_eq!(run_args(&prog, 109, x86, [0xae80, 0xae01]).0, DENY, "another ioctl");
        assert_eq!(run(&prog, 103, x86, 40).0, DENY);
        for (arg, want) in [(0, RET_ALLOW), (8, RET_ALLOW), (0xffff_ffff, RET_ALLOW), (9, DENY)] {
            assert_eq!(run(&prog, 105, x86, arg).0, want, "personality {arg:#x}");
        }
    }

    #[test]
    fn a_call_is_decided_in_few_instructions() {
        let rules: Vec<(u32, Verdict)> = (0..350).map(|i| (i, Verdict::Allow)).collect();
        let prog = compile(rules, DENY);
        let worst = (0..400).map(|nr| run(&prog, nr, AUDIT_ARCH_X86_64, 0).1).max().unwrap();
        assert!(worst < 30, "{worst} instructions");
    }
}
