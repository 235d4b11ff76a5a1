//! The VM's own resources: onlining hot-plugged vCPUs and memory
//! (OnlineCPUMem), memory block facts (GetGuestDetails), network counters
//! (StatsContainer: containers share the VM's network namespace).
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use protocols::agent::NetworkStats;

use crate::error::{Error, Result};

pub const CPU_DIR: &str = "/sys/devices/system/cpu";
pub const MEMORY_DIR: &str = "/sys/devices/system/memory";
/// How long OnlineCPUMem waits for hot-plugged vCPUs to appear in sysfs.
const CPU_APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// Entries `<prefix><number>` of `dir`, sorted by number.
fn numbered(dir: &Path, prefix: &str) -> Vec<(u32, std::path::PathBuf)> {
    let mut v: Vec<(u32, std::path::PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Onlines offline vCPUs under `dir` (sysfs `cpu<N>/online` = 0), at most
/// `max` of them (0 = all). Returns how many were onlined.
pub fn online_cpus_once(dir: &Path, max: u32) -> Result<u32> {
    let mut done = 0;
    for (_, path) in numbered(dir, "cpu") {
        if max != 0 && done >= max {
            break;
        }
        let online = path.join("online");
        // cpu0 usually has no `online` file: it cannot go offline.
        let Ok(state) = fs::read_to_string(&online) else {
            continue;
        };
        if state.trim() == "0" {
            fs::write(&online, "1")
                .map_err(|e| Error::io(format!("onlining {}", path.display()), e))?;
            done += 1;
        }
    }
    Ok(done)
}

/// Onlines `nb` hot-plugged vCPUs (0 = whatever is offline now), waiting
/// for them to show up: QEMU's ACPI hotplug reaches the guest asynchronously.
pub async fn online_cpus(dir: &Path, nb: u32) -> Result<u32> {
    let deadline = Instant::now() + CPU_APPEAR_TIMEOUT;
    let mut total = 0;
    loop {
        let want = if nb == 0 { 0 } else { nb - total };
        let cpus = dir.to_path_buf();
        total += crate::blocking::run(move || online_cpus_once(&cpus, want)).await?;
        if nb == 0 || total >= nb {
            return Ok(total);
        }
        if Instant::now() >= deadline {
            return Err(Error::FailedPrecondition(format!(
                "only {total} of {nb} vCPUs appeared within {CPU_APPEAR_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Onlines every offline memory block under `dir` (`memory<N>/state`).
pub fn online_memory(dir: &Path) -> Result<u32> {
    let mut done = 0;
    for (_, path) in numbered(dir, "memory") {
        let state = path.join("state");
        if fs::read_to_string(&state).is_ok_and(|s| s.trim() == "offline") {
            fs::write(&state, "online")
                .map_err(|e| Error::io(format!("onlining {}", path.display()), e))?;
            done += 1;
        }
    }
    Ok(done)
}

/// Size of a memory block (sysfs gives it in hex), 0 if unknown.
pub fn memory_block_size(dir: &Path) -> u64 {
    fs::read_to_string(dir.join("block_size_bytes"))
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether memory can be added by writing to `probe` (no ACPI hotplug needed).
pub fn memory_probe_supported(dir: &Path) -> bool {
    dir.join("probe").exists()
}

/// Parses `/proc/net/dev`: one entry per interface.
pub fn parse_net_dev(text: &str) -> Vec<NetworkStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            if n.len() < 12 {
                return None;
            }
            Some(NetworkStats {
                name: name.trim().to_string(),
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
                ..Default::default()
            })
        })
        .collect()
}

/// The VM's interfaces and their counters.
pub fn network_stats() -> Vec<NetworkStats> {
    parse_net_dev(&fs::read_to_string("/proc/net/dev").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_is_parsed() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:    1296      16    0    0    0     0          0         0     1296      16    0    0    0     0       0          0\n  \
             eth0: 9000 10 1 2 0 0 0 0 7000 8 3 4 0 0 0 0\n";
        let s = parse_net_dev(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "lo");
        assert_eq!((s[0].rx_bytes, s[0].tx_packets), (1296, 16));
        assert_eq!(s[1].name, "eth0");
        assert_eq!(
            (
                s[1].rx_bytes,
                s[1].rx_packets,
                s[1].rx_errors,
                s[1].rx_dropped
            ),
            (9000, 10, 1, 2)
        );
        assert_eq!(
            (
                s[1].tx_bytes,
                s[1].tx_packets,
                s[1].tx_errors,
                s[1].tx_dropped
            ),
            (7000, 8, 3, 4)
        );
        assert!(parse_net_dev("garbage\n\nx: 1 2\n").is_empty());
    }

    #[tokio::test]
    async fn offline_cpus_and_memory_are_onlined() {
        let d = tempfile::tempdir().expect("tempdir");
        let cpus = d.path().join("cpu");
        for (n, state) in [(0, None), (1, Some("1")), (2, Some("0")), (3, Some("0"))] {
            let c = cpus.join(format!("cpu{n}"));
            fs::create_dir_all(&c).expect("mkdir");
            if let Some(s) = state {
                fs::write(c.join("online"), s).expect("write");
            }
        }
        fs::create_dir_all(cpus.join("cpufreq")).expect("not a cpu");
        assert_eq!(online_cpus(&cpus, 1).await.expect("online"), 1);
        assert_eq!(
            fs::read_to_string(cpus.join("cpu2/online")).expect("read"),
            "1"
        );
        assert_eq!(
            fs::read_to_string(cpus.join("cpu3/online")).expect("read"),
            "0"
        );
        assert_eq!(online_cpus(&cpus, 0).await.expect("all"), 1);
        assert_eq!(online_cpus(&cpus, 0).await.expect("none left"), 0);

        let mem = d.path().join("memory");
        for (n, state) in [(0, "online"), (8, "offline"), (9, "offline")] {
            let m = mem.join(format!("memory{n}"));
            fs::create_dir_all(&m).expect("mkdir");
            fs::write(m.join("state"), state).expect("write");
        }
        fs::write(mem.join("block_size_bytes"), "8000000\n").expect("write");
        assert_eq!(online_memory(&mem).expect("online"), 2);
        assert_eq!(
            fs::read_to_string(mem.join("memory9/state")).expect("read"),
            "online"
        );
        assert_eq!(memory_block_size(&mem), 128 << 20);
        assert!(!memory_probe_supported(&mem));
    }
}
