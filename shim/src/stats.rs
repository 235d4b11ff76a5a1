//! Task `Stats`: the agent's container statistics as containerd's cgroup
//! metrics, typed after the HOST's cgroup mode (containerd and CRI decode
//! `io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`; upstream runtime-rs
//! always sends v1, its issue 12988).
//!
//! The guest's agent may run on cgroups v1 (upstream kata agent: v1 keys in
//! `memory_stats.stats`, e.g. `rss`, `total_inactive_file`) or v2 (ours: the
//! keys of `memory.stat`, e.g. `anon`, `inactive_file`); both key sets are
//! understood, whichever metrics type is produced.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use protocols::agent::{BlkioStatsEntry, CgroupStats, MemoryData, StatsContainerResponse};
use protocols::containerd::cgroups::metrics as v1;
use protocols::containerd::cgroups_v2::metrics as v2;
use protocols::protobuf::well_known_types::any::Any;
use protocols::protobuf::{Message, MessageField};

/// Whether the host runs the unified cgroup v2 hierarchy (what containerd
/// checks to pick the metrics type it expects).
pub fn host_cgroup_v2() -> bool {
    cgroup_v2_at(Path::new("/sys/fs/cgroup"))
}

/// Whether the cgroup mount point `root` is a cgroup v2 hierarchy.
fn cgroup_v2_at(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

/// The agent's statistics as containerd's `io.containerd.cgroups.v2.Metrics`
/// (`v2`) or `io.containerd.cgroups.v1.Metrics`, packed the way containerd's
/// typeurl registry expects (type_url = the message's full name, no prefix).
pub fn to_metrics_any(stats: &StatsContainerResponse, v2: bool) -> Any {
    // Names written out rather than taken from the descriptors: protobuf's
    // reflection tables cost every shim hundreds of KiB once built (the
    // tests check the names against the descriptors).
    if v2 {
        pack("io.containerd.cgroups.v2.Metrics", &to_v2(stats))
    } else {
        pack("io.containerd.cgroups.v1.Metrics", &to_v1(stats))
    }
}

fn pack<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_owned(),
        // Encoding a message into a Vec cannot fail (no size limit reached
        // with these small messages); an empty value still decodes.
        value: m.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

/// The memory.stat map, answering v1 and v2 key names alike.
struct MemStat<'a>(&'a HashMap<String, u64>);

impl MemStat<'_> {
    /// The first of `keys` present in the map, else 0.
    fn get(&self, keys: &[&str]) -> u64 {
        keys.iter()
            .find_map(|k| self.0.get(*k).copied())
            .unwrap_or(0)
    }
}

fn v1_entry(d: &MessageField<MemoryData>) -> MessageField<v1::MemoryEntry> {
    match d.as_ref() {
        Some(d) => MessageField::some(v1::MemoryEntry {
            limit: d.limit,
            usage: d.usage,
            max: d.max_usage,
            failcnt: d.failcnt,
            ..Default::default()
        }),
        None => MessageField::none(),
    }
}

fn v1_blkio(entries: &[BlkioStatsEntry]) -> Vec<v1::BlkIOEntry> {
    entries
        .iter()
        .map(|e| v1::BlkIOEntry {
            op: e.op.clone(),
            major: e.major,
            minor: e.minor,
            value: e.value,
            ..Default::default()
        })
        .collect()
}

/// Hugetlb entries sorted by page size, for a stable answer.
fn sorted_hugetlb(cg: &CgroupStats) -> Vec<(&String, &protocols::agent::HugetlbStats)> {
    let mut h: Vec<_> = cg.hugetlb_stats.iter().collect();
    h.sort_by(|a, b| a.0.cmp(b.0));
    h
}

// Over 80 lines on purpose: a field-by-field copy into containerd's cgroup v1 metrics message.
fn to_v1(stats: &StatsContainerResponse) -> v1::Metrics {
    let mut m = v1::Metrics::default();
    for n in &stats.network_stats {
        m.network.push(v1::NetworkStat {
            name: n.name.clone(),
            rx_bytes: n.rx_bytes,
            rx_packets: n.rx_packets,
            rx_errors: n.rx_errors,
            rx_dropped: n.rx_dropped,
            tx_bytes: n.tx_bytes,
            tx_packets: n.tx_packets,
            tx_errors: n.tx_errors,
            tx_dropped: n.tx_dropped,
            ..Default::default()
        });
    }
    let Some(cg) = stats.cgroup_stats.as_ref() else {
        return m;
    };
    if let Some(cpu) = cg.cpu_stats.as_ref() {
        let mut c = v1::CPUStat::default();
        if let Some(u) = cpu.cpu_usage.as_ref() {
            c.usage = MessageField::some(v1::CPUUsage {
                total: u.total_usage,
                kernel: u.usage_in_kernelmode,
                user: u.usage_in_usermode,
                per_cpu: u.percpu_usage.clone(),
                ..Default::default()
            });
        }
        if let Some(t) = cpu.throttling_data.as_ref() {
            c.throttling = MessageField::some(v1::Throttle {
                periods: t.periods,
                throttled_periods: t.throttled_periods,
                throttled_time: t.throttled_time,
                ..Default::default()
            });
        }
        m.cpu = MessageField::some(c);
    }
    if let Some(mem) = cg.memory_stats.as_ref() {
        let s = MemStat(&mem.stats);
        let cache = match s.get(&["cache", "file"]) {
            0 => mem.cache,
            c => c,
        };
        // A container's cgroup is a leaf: its hierarchical totals are its own
        // counters when the agent gives no total_* (cgroup v2 guests).
        m.memory = MessageField::some(v1::MemoryStat {
            cache,
            rss: s.get(&["rss", "anon"]),
            rss_huge: s.get(&["rss_huge", "anon_thp"]),
            mapped_file: s.get(&["mapped_file", "file_mapped"]),
            dirty: s.get(&["dirty", "file_dirty"]),
            writeback: s.get(&["writeback", "file_writeback"]),
            pg_pg_in: s.get(&["pgpgin"]),
            pg_pg_out: s.get(&["pgpgout"]),
            pg_fault: s.get(&["pgfault"]),
            pg_maj_fault: s.get(&["pgmajfault"]),
            inactive_anon: s.get(&["inactive_anon"]),
            active_anon: s.get(&["active_anon"]),
            inactive_file: s.get(&["inactive_file"]),
            active_file: s.get(&["active_file"]),
            unevictable: s.get(&["unevictable"]),
            hierarchical_memory_limit: s.get(&["hierarchical_memory_limit"]),
            hierarchical_swap_limit: s.get(&["hierarchical_memsw_limit"]),
            total_cache: match s.get(&["total_cache"]) {
                0 => cache,
                c => c,
            },
            total_rss: s.get(&["total_rss", "rss", "anon"]),
            total_rss_huge: s.get(&["total_rss_huge", "rss_huge", "anon_thp"]),
            total_mapped_file: s.get(&["total_mapped_file", "mapped_file", "file_mapped"]),
            total_dirty: s.get(&["total_dirty", "dirty", "file_dirty"]),
            total_writeback: s.get(&["total_writeback", "writeback", "file_writeback"]),
            total_pg_pg_in: s.get(&["total_pgpgin", "pgpgin"]),
            total_pg_pg_out: s.get(&["total_pgpgout", "pgpgout"]),
            total_pg_fault: s.get(&["total_pgfault", "pgfault"]),
            total_pg_maj_fault: s.get(&["total_pgmajfault", "pgmajfault"]),
            total_inactive_anon: s.get(&["total_inactive_anon", "inactive_anon"]),
            total_active_anon: s.get(&["total_active_anon", "active_anon"]),
            total_inactive_file: s.get(&["total_inactive_file", "inactive_file"]),
            total_active_file: s.get(&["total_active_file", "active_file"]),
            total_unevictable: s.get(&["total_unevictable", "unevictable"]),
            usage: v1_entry(&mem.usage),
            swap: v1_entry(&mem.swap_usage),
            kernel: v1_entry(&mem.kernel_usage),
            ..Default::default()
        });
    }
    if let Some(p) = cg.pids_stats.as_ref() {
        m.pids = MessageField::some(v1::PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    if let Some(b) = cg.blkio_stats.as_ref() {
        m.blkio = MessageField::some(v1::BlkIOStat {
            io_service_bytes_recursive: v1_blkio(&b.io_service_bytes_recursive),
            io_serviced_recursive: v1_blkio(&b.io_serviced_recursive),
            io_queued_recursive: v1_blkio(&b.io_queued_recursive),
            io_service_time_recursive: v1_blkio(&b.io_service_time_recursive),
            io_wait_time_recursive: v1_blkio(&b.io_wait_time_recursive),
            io_merged_recursive: v1_blkio(&b.io_merged_recursive),
            io_time_recursive: v1_blkio(&b.io_time_recursive),
            sectors_recursive: v1_blkio(&b.sectors_recursive),
            ..Default::default()
        });
    }
    for (pagesize, h) in sorted_hugetlb(cg) {
        m.hugetlb.push(v1::HugetlbStat {
            usage: h.usage,
            max: h.max_usage,
            failcnt: h.failcnt,
            pagesize: pagesize.clone(),
            ..Default::default()
        });
    }
    m
}

/// v1 blkio "Read"/"Write" entries folded into v2 io.stat lines per device.
fn v2_io(b: &protocols::agent::BlkioStats) -> Vec<v2::IOEntry> {
    let mut dev: BTreeMap<(u64, u64), v2::IOEntry> = BTreeMap::new();
    let mut fold = |entries: &[BlkioStatsEntry], bytes: bool| {
        for e in entries {
            let d = dev
                .entry((e.major, e.minor))
                .or_insert_with(|| v2::IOEntry {
                    major: e.major,
                    minor: e.minor,
                    ..Default::default()
                });
            let slot = match (e.op.to_ascii_lowercase().as_str(), bytes) {
                ("read", true) => &mut d.rbytes,
                ("write", true) => &mut d.wbytes,
                ("read", false) => &mut d.rios,
                ("write", false) => &mut d.wios,
                _ => continue, // Sync, Async, Total, Discard: no v2 field
            };
            *slot = slot.saturating_add(e.value);
        }
    };
    fold(&b.io_service_bytes_recursive, true);
    fold(&b.io_serviced_recursive, false);
    dev.into_values().collect()
}

// Over 80 lines on purpose: a field-by-field copy into containerd's cgroup v2 metrics message.
fn to_v2(stats: &StatsContainerResponse) -> v2::Metrics {
    let mut m = v2::Metrics::default();
    for n in &stats.network_stats {
        m.network.push(v2::NetworkStat {
            name: n.name.clone(),
            rx_bytes: n.rx_bytes,
            rx_packets: n.rx_packets,
            rx_errors: n.rx_errors,
            rx_dropped: n.rx_dropped,
            tx_bytes: n.tx_bytes,
            tx_packets: n.tx_packets,
            tx_errors: n.tx_errors,
            tx_dropped: n.tx_dropped,
            ..Default::default()
        });
    }
    let Some(cg) = stats.cgroup_stats.as_ref() else {
        return m;
    };
    if let Some(cpu) = cg.cpu_stats.as_ref() {
        let mut c = v2::CPUStat::default();
        if let Some(u) = cpu.cpu_usage.as_ref() {
            c.usage_usec = u.total_usage / 1000;
            c.user_usec = u.usage_in_usermode / 1000;
            c.system_usec = u.usage_in_kernelmode / 1000;
        }
        if let Some(t) = cpu.throttling_data.as_ref() {
            c.nr_periods = t.periods;
            c.nr_throttled = t.throttled_periods;
            c.throttled_usec = t.throttled_time / 1000;
        }
        m.cpu = MessageField::some(c);
    }
    if let Some(mem) = cg.memory_stats.as_ref() {
        let s = MemStat(&mem.stats);
        let usage = mem.usage.as_ref();
        let swap = mem.swap_usage.as_ref();
        let file = match s.get(&["file", "total_cache", "cache"]) {
            0 => mem.cache,
            f => f,
        };
        m.memory = MessageField::some(v2::MemoryStat {
            anon: s.get(&["anon", "total_rss", "rss"]),
            file,
            kernel_stack: s.get(&["kernel_stack"]),
            slab: s.get(&["slab"]),
            sock: s.get(&["sock"]),
            shmem: s.get(&["shmem"]),
            file_mapped: s.get(&["file_mapped", "total_mapped_file", "mapped_file"]),
            file_dirty: s.get(&["file_dirty", "total_dirty", "dirty"]),
            file_writeback: s.get(&["file_writeback", "total_writeback", "writeback"]),
            anon_thp: s.get(&["anon_thp", "total_rss_huge", "rss_huge"]),
            inactive_anon: s.get(&["inactive_anon", "total_inactive_anon"]),
            active_anon: s.get(&["active_anon", "total_active_anon"]),
            inactive_file: s.get(&["inactive_file", "total_inactive_file"]),
            active_file: s.get(&["active_file", "total_active_file"]),
            unevictable: s.get(&["unevictable", "total_unevictable"]),
            slab_reclaimable: s.get(&["slab_reclaimable"]),
            slab_unreclaimable: s.get(&["slab_unreclaimable"]),
            pgfault: s.get(&["pgfault", "total_pgfault"]),
            pgmajfault: s.get(&["pgmajfault", "total_pgmajfault"]),
            workingset_refault: s.get(&["workingset_refault"]),
            workingset_activate: s.get(&["workingset_activate"]),
            workingset_nodereclaim: s.get(&["workingset_nodereclaim"]),
            pgrefill: s.get(&["pgrefill"]),
            pgscan: s.get(&["pgscan"]),
            pgsteal: s.get(&["pgsteal"]),
            pgactivate: s.get(&["pgactivate"]),
            pgdeactivate: s.get(&["pgdeactivate"]),
            pglazyfree: s.get(&["pglazyfree"]),
            pglazyfreed: s.get(&["pglazyfreed"]),
            thp_fault_alloc: s.get(&["thp_fault_alloc"]),
            thp_collapse_alloc: s.get(&["thp_collapse_alloc"]),
            usage: usage.map_or(0, |u| u.usage),
            usage_limit: usage.map_or(0, |u| u.limit),
            max_usage: usage.map_or(0, |u| u.max_usage),
            swap_usage: swap.map_or(0, |u| u.usage),
            swap_limit: swap.map_or(0, |u| u.limit),
            swap_max_usage: swap.map_or(0, |u| u.max_usage),
            ..Default::default()
        });
        // memory.events "max" is what the v2 agent reports as failcnt.
        m.memory_events = MessageField::some(v2::MemoryEvents {
            max: usage.map_or(0, |u| u.failcnt),
            ..Default::default()
        });
    }
    if let Some(p) = cg.pids_stats.as_ref() {
        m.pids = MessageField::some(v2::PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    if let Some(b) = cg.blkio_stats.as_ref() {
        m.io = MessageField::some(v2::IOStat {
            usage: v2_io(b),
            ..Default::default()
        });
    }
    for (pagesize, h) in sorted_hugetlb(cg) {
        m.hugetlb.push(v2::HugeTlbStat {
            current: h.usage,
            max: h.max_usage,
            failcnt: h.failcnt,
            pagesize: pagesize.clone(),
            ..Default::default()
        });
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::agent::{
        BlkioStats, CpuStats, CpuUsage, HugetlbStats, MemoryStats, NetworkStats, PidsStats,
        ThrottlingData,
    };
    use protocols::protobuf::MessageFull;

    fn entry(major: u64, minor: u64, op: &str, value: u64) -> BlkioStatsEntry {
        BlkioStatsEntry {
            major,
            minor,
            op: op.into(),
            value,
            ..Default::default()
        }
    }

    /// What a cgroup v2 guest agent (ours) reports.
    fn sample(mem_keys: &[(&str, u64)]) -> StatsContainerResponse {
        let cg = CgroupStats {
            cpu_stats: MessageField::some(CpuStats {
                cpu_usage: MessageField::some(CpuUsage {
                    total_usage: 5_000_000,
                    percpu_usage: vec![2_000_000, 3_000_000],
                    usage_in_kernelmode: 1_000_000,
                    usage_in_usermode: 4_000_000,
                    ..Default::default()
                }),
                throttling_data: MessageField::some(ThrottlingData {
                    periods: 10,
                    throttled_periods: 3,
                    throttled_time: 7_000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory_stats: MessageField::some(MemoryStats {
                cache: 11,
                usage: MessageField::some(MemoryData {
                    usage: 100,
                    max_usage: 150,
                    failcnt: 2,
                    limit: 1000,
                    ..Default::default()
                }),
                swap_usage: MessageField::some(MemoryData {
                    usage: 5,
                    limit: 50,
                    ..Default::default()
                }),
                stats: mem_keys.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                ..Default::default()
            }),
            pids_stats: MessageField::some(PidsStats {
                current: 4,
                limit: 64,
                ..Default::default()
            }),
            blkio_stats: MessageField::some(BlkioStats {
                io_service_bytes_recursive: vec![
                    entry(8, 0, "Read", 4096),
                    entry(8, 0, "Write", 8192),
                    entry(8, 0, "Total", 12288),
                    entry(253, 1, "read", 512),
                ],
                io_serviced_recursive: vec![entry(8, 0, "Read", 1), entry(8, 0, "Write", 2)],
                ..Default::default()
            }),
            hugetlb_stats: [
                (
                    "2MB".to_string(),
                    HugetlbStats {
                        usage: 2 << 20,
                        max_usage: 4 << 20,
                        failcnt: 1,
                        ..Default::default()
                    },
                ),
                ("1GB".to_string(), HugetlbStats::default()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        StatsContainerResponse {
            cgroup_stats: MessageField::some(cg),
            network_stats: vec![NetworkStats {
                name: "eth0".into(),
                rx_bytes: 1,
                tx_bytes: 2,
                rx_packets: 3,
                tx_dropped: 4,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn decode_v1(any: &Any) -> v1::Metrics {
        assert_eq!(any.type_url, v1::Metrics::descriptor().full_name());
        v1::Metrics::parse_from_bytes(&any.value).unwrap()
    }

    fn decode_v2(any: &Any) -> v2::Metrics {
        assert_eq!(any.type_url, v2::Metrics::descriptor().full_name());
        v2::Metrics::parse_from_bytes(&any.value).unwrap()
    }

    #[test]
    fn v1_metrics_carry_every_section() {
        let m = decode_v1(&to_metrics_any(
            &sample(&[("rss", 40), ("total_inactive_file", 9), ("pgpgin", 6)]),
            false,
        ));
        let cpu = m.cpu.as_ref().unwrap();
        let u = cpu.usage.as_ref().unwrap();
        assert_eq!(
            (u.total, u.kernel, u.user),
            (5_000_000, 1_000_000, 4_000_000)
        );
        assert_eq!(u.per_cpu, vec![2_000_000, 3_000_000]);
        let t = cpu.throttling.as_ref().unwrap();
        assert_eq!(
            (t.periods, t.throttled_periods, t.throttled_time),
            (10, 3, 7_000)
        );

        let mem = m.memory.as_ref().unwrap();
        assert_eq!(mem.cache, 11, "falls back to MemoryStats.cache");
        assert_eq!(mem.rss, 40);
        assert_eq!(mem.total_rss, 40, "leaf cgroup: total = own");
        assert_eq!(mem.total_inactive_file, 9);
        assert_eq!(mem.pg_pg_in, 6);
        let usage = mem.usage.as_ref().unwrap();
        assert_eq!(
            (usage.usage, usage.limit, usage.max, usage.failcnt),
            (100, 1000, 150, 2)
        );
        let swap = mem.swap.as_ref().unwrap();
        assert_eq!((swap.usage, swap.limit), (5, 50));
        assert!(mem.kernel.is_none());

        let pids = m.pids.as_ref().unwrap();
        assert_eq!((pids.current, pids.limit), (4, 64));

        let blkio = m.blkio.as_ref().unwrap();
        assert_eq!(blkio.io_service_bytes_recursive.len(), 4);
        let e = &blkio.io_service_bytes_recursive[1];
        assert_eq!(
            (e.major, e.minor, e.op.as_str(), e.value),
            (8, 0, "Write", 8192)
        );
        assert_eq!(blkio.io_serviced_recursive.len(), 2);

        assert_eq!(m.hugetlb.len(), 2);
        let h = &m.hugetlb[1];
        assert_eq!(h.pagesize, "2MB");
        assert_eq!((h.usage, h.max, h.failcnt), (2 << 20, 4 << 20, 1));

        assert_eq!(m.network.len(), 1);
        let n = &m.network[0];
        assert_eq!(n.name, "eth0");
        assert_eq!(
            (n.rx_bytes, n.tx_bytes, n.rx_packets, n.tx_dropped),
            (1, 2, 3, 4)
        );
    }

    #[test]
    fn v1_metrics_understand_cgroup_v2_guest_keys() {
        let m = decode_v1(&to_metrics_any(
            &sample(&[
                ("anon", 30),
                ("file", 12),
                ("file_mapped", 3),
                ("inactive_file", 8),
            ]),
            false,
        ));
        let mem = m.memory.as_ref().unwrap();
        assert_eq!((mem.rss, mem.total_rss), (30, 30));
        assert_eq!((mem.cache, mem.total_cache), (12, 12));
        assert_eq!(mem.mapped_file, 3);
        assert_eq!((mem.inactive_file, mem.total_inactive_file), (8, 8));
    }

    #[test]
    fn v2_metrics_carry_every_section() {
        let m = decode_v2(&to_metrics_any(
            &sample(&[
                ("anon", 30),
                ("file", 12),
                ("inactive_file", 8),
                ("slab", 2),
                ("pgmajfault", 1),
            ]),
            true,
        ));
        let cpu = m.cpu.as_ref().unwrap();
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
            (5_000, 4_000, 1_000)
        );
        assert_eq!(
            (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
            (10, 3, 7)
        );

        let mem = m.memory.as_ref().unwrap();
        assert_eq!(
            (mem.usage, mem.usage_limit, mem.max_usage),
            (100, 1000, 150)
        );
        assert_eq!((mem.swap_usage, mem.swap_limit), (5, 50));
        assert_eq!((mem.anon, mem.file, mem.inactive_file), (30, 12, 8));
        assert_eq!((mem.slab, mem.pgmajfault), (2, 1));
        assert_eq!(m.memory_events.as_ref().unwrap().max, 2);

        let pids = m.pids.as_ref().unwrap();
        assert_eq!((pids.current, pids.limit), (4, 64));

        let io = &m.io.as_ref().unwrap().usage;
        assert_eq!(io.len(), 2, "{io:?}");
        let sda = &io[0];
        assert_eq!((sda.major, sda.minor), (8, 0));
        assert_eq!(
            (sda.rbytes, sda.wbytes, sda.rios, sda.wios),
            (4096, 8192, 1, 2)
        );
        let dm = &io[1];
        assert_eq!((dm.major, dm.minor, dm.rbytes, dm.wbytes), (253, 1, 512, 0));

        assert_eq!(m.hugetlb.len(), 2);
        let h = &m.hugetlb[1];
        assert_eq!(h.pagesize, "2MB");
        assert_eq!((h.current, h.max, h.failcnt), (2 << 20, 4 << 20, 1));

        assert_eq!(m.network.len(), 1);
        assert_eq!(m.network[0].name, "eth0");
        assert_eq!(m.network[0].tx_dropped, 4);
    }

    #[test]
    fn v2_metrics_understand_cgroup_v1_guest_keys() {
        let m = decode_v2(&to_metrics_any(
            &sample(&[
                ("rss", 40),
                ("cache", 13),
                ("total_inactive_file", 9),
                ("mapped_file", 3),
            ]),
            true,
        ));
        let mem = m.memory.as_ref().unwrap();
        assert_eq!((mem.anon, mem.file), (40, 13));
        assert_eq!((mem.inactive_file, mem.file_mapped), (9, 3));
    }

    #[test]
    fn empty_answer_gives_empty_metrics() {
        let empty = StatsContainerResponse::default();
        assert_eq!(
            decode_v1(&to_metrics_any(&empty, false)),
            v1::Metrics::default()
        );
        assert_eq!(
            decode_v2(&to_metrics_any(&empty, true)),
            v2::Metrics::default()
        );
    }

    #[test]
    fn cgroup_mode_follows_cgroup_controllers() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!cgroup_v2_at(dir.path()));
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        assert!(cgroup_v2_at(dir.path()));
    }
}
