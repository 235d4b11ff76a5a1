//! Host memory of processes from `/proc`: RSS and PSS (`smaps_rollup`),
//! process trees, and the shim daemons of a containerd.

use std::collections::BTreeMap;

/// Resident and proportional set size of one process or a group, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// Private pages (USS): what the process alone costs.
    pub uss_kib: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
            uss_kib: self.uss_kib + o.uss_kib,
        }
    }
}

/// Parses `smaps_rollup` text.
pub fn parse_rollup(text: &str) -> Mem {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kib: field("Rss:"),
        pss_kib: field("Pss:"),
        uss_kib: field("Private_Clean:") + field("Private_Dirty:"),
    }
}

/// RSS/PSS of `pid` (zero if it is gone).
pub fn rollup(pid: u32) -> Mem {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map(|t| parse_rollup(&t))
        .unwrap_or_default()
}

/// The process's argv.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Short name of the process's executable (`comm`).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Number of threads.
pub fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised comm: state ppid ...
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and all its descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// Long-running shim daemons of `binary` in namespace `ns` (not the short
/// `start`/`delete` invocations), keyed by their `-id`.
pub fn shim_daemons(binary: &str, ns: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for pid in all_pids() {
        let argv = cmdline(pid);
        let Some(exe) = argv.first() else { continue };
        if !exe.ends_with(binary) || argv.iter().any(|a| a == "start" || a == "delete") {
            continue;
        }
        let after = |flag: &str| {
            argv.iter()
                .position(|a| a == flag)
                .and_then(|i| argv.get(i + 1))
                .cloned()
        };
        if after("-namespace").as_deref() != Some(ns) {
            continue;
        }
        if let Some(id) = after("-id") {
            out.insert(id, pid);
        }
    }
    out
}

/// Memory of a shim and its descendants, by process name (`comm`).
pub fn by_process(root: u32) -> BTreeMap<String, Mem> {
    let mut out: BTreeMap<String, Mem> = BTreeMap::new();
    for pid in tree(root) {
        let m = rollup(pid);
        let e = out.entry(comm(pid)).or_default();
        *e = *e + m;
    }
    out
}

/// Total PSS/RSS of a set of process trees.
pub fn trees_total(roots: impl IntoIterator<Item = u32>) -> Mem {
    roots
        .into_iter()
        .flat_map(tree)
        .map(rollup)
        .fold(Mem::default(), |a, b| a + b)
}

/// Guest RAM the guest touched, TCG's translation cache and the rest of
/// QEMU's memory, from QEMU's `smaps` (KiB, by mapping).
#[derive(Debug, Clone, Copy, Default)]
pub struct QemuBreakdown {
    /// Shared memfd mapping backing guest RAM (`memory-backend-memfd`).
    pub guest_ram: Mem,
    /// Largest private anonymous mapping with execute permission: TCG's code buffer.
    pub tcg_code: Mem,
    /// QEMU's mappings of the `-kernel` and `-initrd` files (the PVH
    /// `vmlinux` is read into a private mapping QEMU keeps).
    pub kernel_file: Mem,
    pub initrd_file: Mem,
    /// Everything else: QEMU's heap, binary and libraries.
    pub other: Mem,
}

pub fn qemu_breakdown(pid: u32) -> QemuBreakdown {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let argv = cmdline(pid);
    let arg = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .cloned()
            .unwrap_or_else(|| "\0".into())
    };
    let (kernel, initrd) = (arg("-kernel"), arg("-initrd"));
    let mut b = QemuBreakdown::default();
    let mut header = String::new();
    let mut cur = Mem::default();
    let flush = |header: &str, m: Mem, b: &mut QemuBreakdown| {
        if header.is_empty() {
            return;
        }
        let cols: Vec<&str> = header.split_whitespace().collect();
        let perms = cols.get(1).copied().unwrap_or("");
        let name = cols.get(5..).map(|c| c.join(" ")).unwrap_or_default();
        if name.contains("memfd:") {
            b.guest_ram = b.guest_ram + m;
        } else if perms.starts_with("rwx") && name.is_empty() {
            b.tcg_code = b.tcg_code + m;
        } else if name == kernel {
            b.kernel_file = b.kernel_file + m;
        } else if name == initrd {
            b.initrd_file = b.initrd_file + m;
        } else {
            b.other = b.other + m;
        }
    };
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            flush(&header, cur, &mut b);
            header = line.to_owned();
            cur = Mem::default();
        } else if let Some(v) = line.strip_prefix("Rss:") {
            cur.rss_kib = v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Pss:") {
            cur.pss_kib = v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
    }
    flush(&header, cur, &mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_fields() {
        let m = parse_rollup(
            "55d0-7ffc ---p 00000000 00:00 0 [rollup]\nRss:  13000 kB\nPss:  12000 kB\n\
             Pss_Anon: 1 kB\nPrivate_Clean: 10 kB\nPrivate_Dirty: 5 kB\n",
        );
        assert_eq!(
            m,
            Mem {
                rss_kib: 13000,
                pss_kib: 12000,
                uss_kib: 15
            }
        );
    }

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id();
        assert!(rollup(me).rss_kib > 0);
        assert!(tree(me).contains(&me));
    }
}
