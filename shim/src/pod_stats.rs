//! The pod's statistics for the Sandbox API's SandboxMetrics: what all of
//! its containers use, summed, as a pod cgroup would count it under runc.
//! The network is the VM's and is shared by every container: taken once.

use protocols::agent::{
    CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats, PidsStats, StatsContainerResponse,
    ThrottlingData,
};
use protocols::protobuf::MessageField;

fn add_usage(to: &mut CpuUsage, u: &CpuUsage) {
    to.total_usage = to.total_usage.saturating_add(u.total_usage);
    to.usage_in_kernelmode = to.usage_in_kernelmode.saturating_add(u.usage_in_kernelmode);
    to.usage_in_usermode = to.usage_in_usermode.saturating_add(u.usage_in_usermode);
    if to.percpu_usage.len() < u.percpu_usage.len() {
        to.percpu_usage.resize(u.percpu_usage.len(), 0);
    }
    for (t, v) in to.percpu_usage.iter_mut().zip(&u.percpu_usage) {
        *t = t.saturating_add(*v);
    }
}

fn add_throttling(to: &mut ThrottlingData, t: &ThrottlingData) {
    to.periods = to.periods.saturating_add(t.periods);
    to.throttled_periods = to.throttled_periods.saturating_add(t.throttled_periods);
    to.throttled_time = to.throttled_time.saturating_add(t.throttled_time);
}

/// Usage adds up; a pod's limit is the containers' limits summed (0 where
/// one is unlimited would be wrong to add: unlimited stays 0).
fn add_memory_data(to: &mut MemoryData, m: &MemoryData) {
    to.usage = to.usage.saturating_add(m.usage);
    to.max_usage = to.max_usage.saturating_add(m.max_usage);
    to.failcnt = to.failcnt.saturating_add(m.failcnt);
    to.limit = to.limit.saturating_add(m.limit);
}

fn add_memory(to: &mut MemoryStats, m: &MemoryStats) {
    to.cache = to.cache.saturating_add(m.cache);
    for (field, from) in [
        (&mut to.usage, &m.usage),
        (&mut to.swap_usage, &m.swap_usage),
        (&mut to.kernel_usage, &m.kernel_usage),
    ] {
        if let Some(d) = from.as_ref() {
            add_memory_data(field.mut_or_insert_default(), d);
        }
    }
    to.use_hierarchy |= m.use_hierarchy;
    for (k, v) in &m.stats {
        let e = to.stats.entry(k.clone()).or_insert(0);
        *e = e.saturating_add(*v);
    }
}

fn add_cgroup(to: &mut CgroupStats, c: &CgroupStats) {
    if let Some(cpu) = c.cpu_stats.as_ref() {
        let t: &mut CpuStats = to.cpu_stats.mut_or_insert_default();
        if let Some(u) = cpu.cpu_usage.as_ref() {
            add_usage(t.cpu_usage.mut_or_insert_default(), u);
        }
        if let Some(th) = cpu.throttling_data.as_ref() {
            add_throttling(t.throttling_data.mut_or_insert_default(), th);
        }
    }
    if let Some(m) = c.memory_stats.as_ref() {
        add_memory(to.memory_stats.mut_or_insert_default(), m);
    }
    if let Some(p) = c.pids_stats.as_ref() {
        let t: &mut PidsStats = to.pids_stats.mut_or_insert_default();
        t.current = t.current.saturating_add(p.current);
        t.limit = t.limit.saturating_add(p.limit);
    }
}

/// The containers' statistics summed into the pod's.
pub fn sum<'a>(
    containers: impl IntoIterator<Item = &'a StatsContainerResponse>,
) -> StatsContainerResponse {
    let mut pod = StatsContainerResponse::default();
    for s in containers {
        if let Some(c) = s.cgroup_stats.as_ref() {
            add_cgroup(pod.cgroup_stats.mut_or_insert_default(), c);
        }
        if pod.network_stats.is_empty() {
            pod.network_stats = s.network_stats.clone();
        }
    }
    if pod.cgroup_stats.is_none() {
        pod.cgroup_stats = MessageField::some(CgroupStats::default());
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::agent::NetworkStats;

    fn container(
        cpu_ns: u64,
        mem: u64,
        limit: u64,
        pids: u64,
        iface: &str,
    ) -> StatsContainerResponse {
        let mut s = StatsContainerResponse::default();
        let c = s.cgroup_stats.mut_or_insert_default();
        let cpu = c.cpu_stats.mut_or_insert_default();
        let u = cpu.cpu_usage.mut_or_insert_default();
        u.total_usage = cpu_ns;
        u.percpu_usage = vec![cpu_ns];
        cpu.throttling_data
            .mut_or_insert_default()
            .throttled_periods = 1;
        let m = c.memory_stats.mut_or_insert_default();
        let d = m.usage.mut_or_insert_default();
        d.usage = mem;
        d.limit = limit;
        m.stats.insert("rss".into(), mem);
        c.pids_stats.mut_or_insert_default().current = pids;
        s.network_stats.push(NetworkStats {
            name: iface.into(),
            ..Default::default()
        });
        s
    }

    #[test]
    fn the_pod_uses_what_its_containers_use() {
        let a = container(100, 10 << 20, 64 << 20, 2, "eth0");
        let b = container(50, 5 << 20, 32 << 20, 3, "eth0-again");
        let pod = sum([&a, &b]);
        let c = pod.cgroup_stats.as_ref().expect("cgroup stats");
        let cpu = c.cpu_stats.cpu_usage.as_ref().expect("cpu");
        assert_eq!(cpu.total_usage, 150);
        assert_eq!(cpu.percpu_usage, vec![150]);
        assert_eq!(c.cpu_stats.throttling_data.throttled_periods, 2);
        let mem = c.memory_stats.usage.as_ref().expect("memory");
        assert_eq!((mem.usage, mem.limit), (15 << 20, 96 << 20));
        assert_eq!(c.memory_stats.stats.get("rss"), Some(&(15 << 20)));
        assert_eq!(c.pids_stats.current, 5);
        // One VM, one network: counted once.
        assert_eq!(pod.network_stats.len(), 1);
        assert_eq!(pod.network_stats[0].name, "eth0");
    }

    #[test]
    fn an_empty_pod_has_zero_usage() {
        let pod = sum([]);
        assert!(pod.cgroup_stats.is_some());
        assert_eq!(pod.cgroup_stats.pids_stats.current, 0);
    }
}
