//! One cgroup v2 directory per container under /sys/fs/cgroup, with the
//! memory, cpu and pids limits of the spec's `Linux.Resources`.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocols::agent::{
    BlkioStats, BlkioStatsEntry, CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats,
    PidsStats, ThrottlingData,
};
use protocols::oci::LinuxResources;

use crate::error::{Error, Result};

const ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: &str = "+cpu +memory +pids +io +cpuset";

#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

/// The cgroup directory for a container: the spec's CgroupsPath when it is a
/// plain path, else `kata/<container id>` (systemd `slice:prefix:name` paths
/// have no systemd to talk to in the guest).
pub fn cgroup_path(cgroups_path: &str, container_id: &str) -> PathBuf {
    let rel = cgroups_path.trim_start_matches('/');
    if rel.is_empty() || rel.contains(':') || rel.split('/').any(|c| c == "..") {
        Path::new(ROOT).join("kata").join(container_id)
    } else {
        Path::new(ROOT).join(rel)
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value)
        .map_err(|e| Error::io(format!("writing {value:?} to {}", path.display()), e))
}

impl Cgroup {
    /// Creates the directory (enabling controllers along the way) and applies limits.
    pub fn create(path: PathBuf, resources: Option<&LinuxResources>) -> Result<Cgroup> {
        let rel = path
            .strip_prefix(ROOT)
            .map_err(|_| Error::InvalidArgument(format!("cgroup {}", path.display())))?;
        let mut dir = PathBuf::from(ROOT);
        for comp in rel.components() {
            // Controllers must be enabled in every ancestor's subtree_control.
            let _ = fs::write(dir.join("cgroup.subtree_control"), CONTROLLERS)
                .or_else(|_| fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids"));
            dir.push(comp);
            if !dir.exists() {
                fs::create_dir(&dir)
                    .map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
            }
        }
        let cg = Cgroup { path };
        if let Some(r) = resources {
            cg.apply(r)?;
        }
        Ok(cg)
    }

    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        if let Some(mem) = r.Memory.as_ref() {
            if mem.Limit > 0 {
                write(&self.path.join("memory.max"), &mem.Limit.to_string())?;
            }
            if mem.Swap > 0 && mem.Limit > 0 && mem.Swap >= mem.Limit {
                // OCI's swap is memory+swap; v2's swap.max is swap alone.
                let _ = write(
                    &self.path.join("memory.swap.max"),
                    &(mem.Swap - mem.Limit).to_string(),
                );
            }
        }
        if let Some(cpu) = r.CPU.as_ref() {
            if cpu.Quota != 0 || cpu.Period != 0 {
                let period = if cpu.Period == 0 { 100_000 } else { cpu.Period };
                let quota = if cpu.Quota > 0 {
                    cpu.Quota.to_string()
                } else {
                    "max".to_string()
                };
                write(&self.path.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            if cpu.Shares > 0 {
                write(
                    &self.path.join("cpu.weight"),
                    &shares_to_weight(cpu.Shares).to_string(),
                )?;
            }
        }
        if let Some(pids) = r.Pids.as_ref() {
            if pids.Limit != 0 {
                let v = if pids.Limit > 0 {
                    pids.Limit.to_string()
                } else {
                    "max".to_string()
                };
                write(&self.path.join("pids.max"), &v)?;
            }
        }
        Ok(())
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn add(&self, pid: i32) -> Result<()> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// Freezes or thaws every process of the cgroup, waiting (briefly) until done.
    pub async fn freeze(&self, frozen: bool) -> Result<()> {
        let freeze = self.path.join("cgroup.freeze");
        crate::blocking::run(move || write(&freeze, if frozen { "1" } else { "0" })).await?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        for _ in 0..100 {
            let events_file = self.path.join("cgroup.events");
            let events = crate::blocking::run(move || {
                Ok(fs::read_to_string(events_file).unwrap_or_default())
            })
            .await?;
            if events.lines().any(|l| l == want) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Error::Timeout(format!(
            "cgroup {} did not reach {want:?}",
            self.path.display()
        )))
    }

    /// Pids of the cgroup's processes.
    pub fn pids(&self) -> Vec<i32> {
        let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many processes the kernel OOM-killed in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        flat_keyed(&self.path.join("memory.events"))
            .get("oom_kill")
            .copied()
            .unwrap_or(0)
    }

    /// cgroup v2 statistics in the agent API's shape (cpu times in nanoseconds).
    pub fn stats(&self) -> CgroupStats {
        let cpu = flat_keyed(&self.path.join("cpu.stat"));
        let get =
            |m: &std::collections::HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let cpu_stats = CpuStats {
            cpu_usage: Some(CpuUsage {
                total_usage: get(&cpu, "usage_usec") * 1000,
                usage_in_usermode: get(&cpu, "user_usec") * 1000,
                usage_in_kernelmode: get(&cpu, "system_usec") * 1000,
                ..Default::default()
            })
            .into(),
            throttling_data: Some(ThrottlingData {
                periods: get(&cpu, "nr_periods"),
                throttled_periods: get(&cpu, "nr_throttled"),
                throttled_time: get(&cpu, "throttled_usec") * 1000,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let mem = flat_keyed(&self.path.join("memory.stat"));
        let events = flat_keyed(&self.path.join("memory.events"));
        let memory_stats = MemoryStats {
            cache: get(&mem, "file"),
            usage: Some(MemoryData {
                usage: read_u64(&self.path.join("memory.current")),
                max_usage: read_u64(&self.path.join("memory.peak")),
                failcnt: get(&events, "max"),
                limit: read_u64(&self.path.join("memory.max")),
                ..Default::default()
            })
            .into(),
            swap_usage: Some(MemoryData {
                usage: read_u64(&self.path.join("memory.swap.current")),
                limit: read_u64(&self.path.join("memory.swap.max")),
                ..Default::default()
            })
            .into(),
            use_hierarchy: true,
            stats: mem.into_iter().collect(),
            ..Default::default()
        };
        let pids_stats = PidsStats {
            current: read_u64(&self.path.join("pids.current")),
            limit: read_u64(&self.path.join("pids.max")),
            ..Default::default()
        };
        CgroupStats {
            cpu_stats: Some(cpu_stats).into(),
            memory_stats: Some(memory_stats).into(),
            pids_stats: Some(pids_stats).into(),
            blkio_stats: Some(parse_io_stat(
                &fs::read_to_string(self.path.join("io.stat")).unwrap_or_default(),
            ))
            .into(),
            ..Default::default()
        }
    }

    /// SIGKILLs every process in the cgroup (cgroup.kill, Linux 5.14+).
    pub fn kill(&self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
    }

    /// Removes the directory; its processes must be gone (retried briefly).
    pub async fn remove(&self) {
        for _ in 0..50 {
            let dir = self.path.clone();
            let removed = crate::blocking::run(move || Ok(fs::remove_dir(dir))).await;
            let Ok(removed) = removed else { break };
            match removed {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        tracing::warn!(path = %self.path.display(), "cgroup not removed");
    }
}

/// A single-value file; "max" and unreadable files read as 0 (no limit / unknown).
fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A flat keyed file ("key value" lines: cpu.stat, memory.stat, memory.events).
fn flat_keyed(path: &Path) -> std::collections::HashMap<String, u64> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// cgroup v2 `io.stat` ("MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..")
/// in the v1-shaped `BlkioStats`: bytes and operations per device, ops
/// named `Read`, `Write`, `Discard` as in cgroup v1's blkio files.
pub fn parse_io_stat(text: &str) -> BlkioStats {
    let mut stats = BlkioStats::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some((major, minor)) = words.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u64>(), minor.parse::<u64>()) else {
            continue;
        };
        for kv in words {
            let Some((key, value)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let (list, op) = match key {
                "rbytes" => (&mut stats.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut stats.io_service_bytes_recursive, "Write"),
                "dbytes" => (&mut stats.io_service_bytes_recursive, "Discard"),
                "rios" => (&mut stats.io_serviced_recursive, "Read"),
                "wios" => (&mut stats.io_serviced_recursive, "Write"),
                "dios" => (&mut stats.io_serviced_recursive, "Discard"),
                _ => continue,
            };
            list.push(BlkioStatsEntry {
                major,
                minor,
                op: op.into(),
                value,
                ..Default::default()
            });
        }
    }
    stats
}

/// cgroup v1 cpu.shares [2, 262144] to v2 cpu.weight [1, 10000] (as runc does).
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_becomes_blkio_entries() {
        let s = parse_io_stat(
            "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\nbad line\n7:1 rbytes=x\n",
        );
        let bytes: Vec<(u64, u64, &str, u64)> = s
            .io_service_bytes_recursive
            .iter()
            .map(|e| (e.major, e.minor, e.op.as_str(), e.value))
            .collect();
        assert_eq!(
            bytes,
            [
                (254, 0, "Read", 4096),
                (254, 0, "Write", 8192),
                (254, 0, "Discard", 0)
            ]
        );
        assert_eq!(s.io_serviced_recursive.len(), 3);
        assert_eq!(s.io_serviced_recursive[1].value, 2);
        assert!(parse_io_stat("").io_service_bytes_recursive.is_empty());
    }

    #[test]
    fn paths_and_weights() {
        assert_eq!(
            cgroup_path("/kubepods/pod1/c1", "c1"),
            PathBuf::from("/sys/fs/cgroup/kubepods/pod1/c1")
        );
        assert_eq!(
            cgroup_path("", "c1"),
            PathBuf::from("/sys/fs/cgroup/kata/c1")
        );
        assert_eq!(
            cgroup_path("system.slice:kata:c1", "c1"),
            PathBuf::from("/sys/fs/cgroup/kata/c1")
        );
        assert_eq!(
            cgroup_path("/../x", "c1"),
            PathBuf::from("/sys/fs/cgroup/kata/c1")
        );
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
