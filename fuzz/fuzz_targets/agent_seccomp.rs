//! The guest agent's seccomp compiler (`runtime::seccomp::compile`), with
//! the compiled filters run by a classic-BPF interpreter here. Properties:
//! every program fits the kernel (≤ 4096 instructions, every path ends in a
//! RET, jumps in range); for each syscall named in the profile and a few
//! others, with arguments from the input, the filters' combined answer (the
//! kernel's "most restrictive wins") is what the OCI profile says: the most
//! restrictive action among the matching rules, else the default action;
//! no input panics.
#![no_main]

use std::str::FromStr;

use arbitrary::Arbitrary;
use kata_shim_fuzz::runtime::seccomp::compile;
use libfuzzer_sys::fuzz_target;
use protocols::oci::{LinuxSeccomp, LinuxSeccompArg, LinuxSyscall};
use syscalls::Sysno;

const ACTIONS: [&str; 9] = [
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_NOTIFY",
];
const NAMES: [&str; 8] = [
    "read",
    "write",
    "openat",
    "getpid",
    "clone",
    "ioctl",
    "personality",
    "no_such_call",
];
const OPS: [&str; 7] = [
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

#[derive(Debug, Arbitrary)]
enum Pick {
    Known(u8),
    Other(String),
}

fn pick(p: &Pick, from: &[&str]) -> String {
    match p {
        Pick::Known(i) => from[usize::from(*i) % from.len()].to_string(),
        Pick::Other(s) => s.clone(),
    }
}

#[derive(Debug, Arbitrary)]
struct Arg {
    index: u8,
    value: u64,
    value_two: u64,
    op: Pick,
}

#[derive(Debug, Arbitrary)]
struct Rule {
    names: Vec<Pick>,
    action: Pick,
    errno: Option<u32>,
    args: Vec<Arg>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    default: Pick,
    flags: Vec<Pick>,
    rules: Vec<Rule>,
    /// Syscall arguments to evaluate with.
    calls: Vec<(u16, [u64; 6])>,
}

/// seccomp_data of an x86_64 syscall.
fn seccomp_data(nr: u32, args: &[u64; 6]) -> [u8; 64] {
    let mut d = [0u8; 64];
    d[0..4].copy_from_slice(&nr.to_le_bytes());
    d[4..8].copy_from_slice(&0xc000_003eu32.to_le_bytes()); // AUDIT_ARCH_X86_64
    for (i, a) in args.iter().enumerate() {
        d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    d
}

/// Runs a classic BPF program (the subset seccomp filters use).
fn run(prog: &[seccompiler::sock_filter], data: &[u8; 64]) -> u32 {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let ins = prog
            .get(pc)
            .unwrap_or_else(|| panic!("pc {pc} past the end"));
        pc += 1;
        match ins.code {
            // LD | W | ABS
            0x20 => {
                let k = ins.k as usize;
                assert!(k % 4 == 0 && k + 4 <= 64, "load at {k}");
                a = u32::from_le_bytes([data[k], data[k + 1], data[k + 2], data[k + 3]]);
            }
            // ALU | AND | K
            0x54 => a &= ins.k,
            // JMP | JA
            0x05 => pc += ins.k as usize,
            // JMP | JEQ/JGT/JGE/JSET | K
            0x15 | 0x25 | 0x35 | 0x45 => {
                let t = match ins.code {
                    0x15 => a == ins.k,
                    0x25 => a > ins.k,
                    0x35 => a >= ins.k,
                    _ => a & ins.k != 0,
                };
                pc += usize::from(if t { ins.jt } else { ins.jf });
            }
            // RET | K
            0x06 => return ins.k,
            c => panic!("BPF opcode {c:#x} not interpreted"),
        }
    }
}

const RET_ACTION_FULL: u32 = 0xffff_0000;

/// The kernel's order: the lowest ACTION_ONLY (as i32) wins.
fn rank(ret: u32) -> i32 {
    (ret & RET_ACTION_FULL) as i32
}

fn ret_of(action: &str, errno: Option<u32>) -> u32 {
    let data = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    match action {
        "SCMP_ACT_ALLOW" => 0x7fff_0000,
        "SCMP_ACT_ERRNO" => 0x0005_0000 | data,
        "SCMP_ACT_TRACE" => 0x7ff0_0000 | data,
        "SCMP_ACT_LOG" => 0x7ffc_0000,
        "SCMP_ACT_TRAP" => 0x0003_0000,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => 0,
        "SCMP_ACT_KILL_PROCESS" => 0x8000_0000,
        other => panic!("accepted action {other:?}"),
    }
}

fn arg_matches(a: &LinuxSeccompArg, args: &[u64; 6]) -> bool {
    // Rules with an index past the sixth argument are refused by compile.
    let Some(&v) = usize::try_from(a.Index).ok().and_then(|i| args.get(i)) else {
        panic!("accepted argument index {}", a.Index);
    };
    match a.Op.as_str() {
        "SCMP_CMP_NE" => v != a.Value,
        "SCMP_CMP_LT" => v < a.Value,
        "SCMP_CMP_LE" => v <= a.Value,
        "SCMP_CMP_EQ" => v == a.Value,
        "SCMP_CMP_GE" => v >= a.Value,
        "SCMP_CMP_GT" => v > a.Value,
        "SCMP_CMP_MASKED_EQ" => v & a.Value == a.ValueTwo,
        other => panic!("accepted operator {other:?}"),
    }
}

/// The OCI rule's argument conditions: all of them, unless two test the
/// same argument (then any of them).
fn rule_matches(s: &LinuxSyscall, args: &[u64; 6]) -> bool {
    if s.Args.is_empty() {
        return true;
    }
    let mut idx: Vec<u64> = s.Args.iter().map(|a| a.Index).collect();
    idx.sort_unstable();
    idx.dedup();
    if idx.len() == s.Args.len() {
        s.Args.iter().all(|a| arg_matches(a, args))
    } else {
        s.Args.iter().any(|a| arg_matches(a, args))
    }
}

fuzz_target!(|input: Input| {
    if input.rules.len() > 24
        || input
            .rules
            .iter()
            .any(|r| r.args.len() > 8 || r.names.len() > 8)
    {
        return;
    }
    let spec = LinuxSeccomp {
        DefaultAction: pick(&input.default, &ACTIONS),
        Architectures: vec!["SCMP_ARCH_X86_64".into()],
        Flags: input
            .flags
            .iter()
            .take(4)
            .map(|f| {
                pick(
                    f,
                    &[
                        "SECCOMP_FILTER_FLAG_TSYNC",
                        "SECCOMP_FILTER_FLAG_LOG",
                        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                    ],
                )
            })
            .collect(),
        Syscalls: input
            .rules
            .iter()
            .map(|r| {
                let mut s = LinuxSyscall {
                    Names: r.names.iter().map(|n| pick(n, &NAMES)).collect(),
                    Action: pick(&r.action, &ACTIONS),
                    Args: r
                        .args
                        .iter()
                        .map(|a| LinuxSeccompArg {
                            Index: u64::from(a.index % 8),
                            Value: a.value,
                            ValueTwo: a.value_two,
                            Op: pick(&a.op, &OPS),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                if let Some(e) = r.errno {
                    s.set_errnoret(e);
                }
                s
            })
            .collect(),
        ..Default::default()
    };
    let Ok(compiled) = compile(&spec, &mut |_| {}) else {
        return;
    };
    for p in &compiled.programs {
        assert!(
            !p.is_empty() && p.len() <= 4096,
            "program of {} instructions",
            p.len()
        );
    }
    let default = ret_of(&spec.DefaultAction, None);
    let mut nrs: Vec<u32> = spec
        .Syscalls
        .iter()
        .flat_map(|s| s.Names.iter())
        .filter_map(|n| Sysno::from_str(n).ok())
        .map(|s| s.id() as u32)
        .collect();
    nrs.push(Sysno::getppid.id() as u32);
    let calls: Vec<[u64; 6]> = input
        .calls
        .iter()
        .take(8)
        .map(|c| c.1)
        .chain([[0; 6]])
        .collect();
    for c in input.calls.iter().take(8) {
        nrs.push(u32::from(c.0 % 512));
    }
    nrs.sort_unstable();
    nrs.dedup();
    for nr in nrs {
        for args in &calls {
            let data = seccomp_data(nr, args);
            // Filters run newest first; on a tie the first answer stays.
            let mut got: Option<u32> = None;
            for p in compiled.programs.iter().rev() {
                let r = run(p, &data);
                if got.map_or(true, |g| rank(r) < rank(g)) {
                    got = Some(r);
                }
            }
            let got = got.unwrap_or(0x7fff_0000);
            let matched: Vec<u32> = spec
                .Syscalls
                .iter()
                .filter(|s| {
                    s.Names
                        .iter()
                        .any(|n| Sysno::from_str(n).is_ok_and(|sn| sn.id() as u32 == nr))
                })
                // Rules answering the default are skipped, unchecked (as runc does).
                .filter(|s| ret_of(&s.Action, s.has_errnoret().then(|| s.errnoret())) != default)
                .filter(|s| rule_matches(s, args))
                .map(|s| ret_of(&s.Action, s.has_errnoret().then(|| s.errnoret())))
                .collect();
            let Some(best) = matched.iter().map(|r| rank(*r)).min() else {
                assert_eq!(
                    got, default,
                    "nr {nr} args {args:?}: unmatched, want the default"
                );
                continue;
            };
            assert_eq!(
                rank(got),
                best,
                "nr {nr} args {args:?}: got {got:#x}, rules {matched:x?}"
            );
            assert!(
                matched.contains(&got),
                "nr {nr}: {got:#x} not among {matched:x?}"
            );
        }
    }
});
