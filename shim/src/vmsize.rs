//! VM sizing: what each container's CPU and memory limits ask of the VM
//! (from its spec at Create, from Task.Update since), and growing the VM by
//! hotplug when they exceed it. Below the Task service and the sandbox: it
//! acts through the `Vm` and `Agent` seams it is handed.

use agent_client::Agent;
use hypervisor::Vm;

use crate::error::Result;

/// Granularity of memory hotplug (the guest's memory block).
const MEMORY_BLOCK_MIB: u32 = 128;

/// What a container's limits ask of the VM. `None`: this source (spec or
/// Update) does not set that limit; `Some(0)`: explicitly unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// vCPUs: CPU quota / period, rounded up.
    pub cpus: Option<u32>,
    /// Memory limit in MiB, rounded up.
    pub memory_mib: Option<u32>,
}

impl Needs {
    /// `self`'s limits, with `older`'s where `self` sets none (an Update
    /// that only sets memory leaves the CPU quota as it was).
    fn over(self, older: Needs) -> Needs {
        Needs {
            cpus: self.cpus.or(older.cpus),
            memory_mib: self.memory_mib.or(older.memory_mib),
        }
    }

    /// From a quota/period pair and a memory limit in bytes (OCI semantics:
    /// unset = 0 in protobuf, absent in JSON; negative = unlimited).
    fn from_limits(quota: Option<i64>, period: Option<u64>, limit: Option<i64>) -> Needs {
        let cpus = match (quota, period) {
            (Some(q), _) if q < 0 => Some(0),
            (Some(q), Some(p)) if q > 0 && p > 0 => {
                Some(u32::try_from((q as u64).div_ceil(p)).unwrap_or(u32::MAX))
            }
            _ => None,
        };
        let memory_mib = match limit {
            Some(l) if l < 0 => Some(0),
            Some(l) if l > 0 => {
                Some(u32::try_from((l as u64).div_ceil(1 << 20)).unwrap_or(u32::MAX))
            }
            _ => None,
        };
        Needs { cpus, memory_mib }
    }
}

/// The VM's current size, its hotplug room, and what each container's
/// limits need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The guest's own share (the configured default size): the limits'
    /// sum comes on top of it, as in Kata, so a container can use its
    /// whole limit.
    pub base_vcpus: u32,
    pub base_memory_mib: u32,
    pub max_vcpus: u32,
    pub max_memory_mib: u32,
    pub slots_left: u32,
    /// Per container: the limits its spec set at Create (read from its
    /// bundle the first time an Update needs them; the spec does not change).
    pub from_spec: std::collections::HashMap<String, Needs>,
    /// Per container: the limits Updates set since (they win over the spec's).
    pub from_update: std::collections::HashMap<String, Needs>,
}

impl VmSize {
    pub fn of(q: &crate::config::QemuConfig) -> Self {
        let hotplug = q.options.memory_hotplug;
        Self {
            vcpus: q.vcpus,
            memory_mib: q.memory_mib,
            base_vcpus: q.vcpus.saturating_sub(q.pod_vcpus),
            base_memory_mib: q.memory_mib.saturating_sub(q.pod_memory_mib),
            max_vcpus: q.options.max_vcpus.unwrap_or(q.vcpus).max(q.vcpus),
            max_memory_mib: hotplug.map_or(q.memory_mib, |h| h.max_mib.max(q.memory_mib)),
            slots_left: hotplug.map_or(0, |h| h.slots),
            from_spec: Default::default(),
            from_update: Default::default(),
        }
    }

    /// The VM size (vCPUs, MiB) the `live` containers' limits ask for:
    /// the guest's share plus their sum (none set: the share alone).
    fn total(&self, live: &[(String, String)]) -> (u32, u32) {
        let (c, m) = live.iter().fold((0u32, 0u32), |(c, m), (id, _)| {
            let spec = self.from_spec.get(id).copied().unwrap_or_default();
            let needs = self.from_update.get(id).map_or(spec, |u| u.over(spec));
            (
                c.saturating_add(needs.cpus.unwrap_or(0)),
                m.saturating_add(needs.memory_mib.unwrap_or(0)),
            )
        });
        (
            self.base_vcpus.saturating_add(c),
            self.base_memory_mib.saturating_add(m),
        )
    }
}

/// What an Update's resources ask for.
fn update_needs(r: &protocols::oci::LinuxResources) -> Needs {
    Needs::from_limits(
        r.CPU.as_ref().map(|c| c.Quota).filter(|q| *q != 0),
        r.CPU.as_ref().map(|c| c.Period),
        r.Memory.as_ref().map(|m| m.Limit).filter(|l| *l != 0),
    )
}

impl Needs {
    /// What a container's spec limits ask of the VM.
    pub fn of_spec(spec: &oci_spec::runtime::Spec) -> Needs {
        let r = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        let cpu = r.and_then(|r| r.cpu().as_ref());
        let memory = r.and_then(|r| r.memory().as_ref());
        Needs::from_limits(
            cpu.and_then(|c| c.quota()),
            cpu.and_then(|c| c.period()),
            memory.and_then(|m| m.limit()),
        )
    }
}

/// What the spec in `bundle` set at Create; unreadable = no limits (logged).
async fn spec_needs(sandbox: &str, cid: &str, bundle: &str) -> Needs {
    match crate::spec::load(std::path::Path::new(bundle)).await {
        Ok(spec) => Needs::of_spec(&spec),
        Err(e) => {
            tracing::warn!(
                sandbox,
                container = cid,
                "limits from the spec unknown: {e}"
            );
            Needs::default()
        }
    }
}

/// What [`grow_for`] acts through: the sandbox's VM and agent.
pub struct Seams<'a> {
    pub sandbox: &'a str,
    pub vm: &'a dyn Vm,
    pub agent: &'a dyn Agent,
}

/// Grows the VM (vCPUs, then memory; the guest onlines them) when the
/// `live` containers' limits (id, bundle), with `cid`'s new ones, exceed it.
/// Above the configured maxima it grows to them and logs, as kata does.
pub async fn grow_for(
    seams: Seams<'_>,
    size: &mut VmSize,
    cid: &str,
    resources: &protocols::oci::LinuxResources,
    live: &[(String, String)],
) -> Result<()> {
    refresh(seams.sandbox, size, live).await;
    let update = update_needs(resources);
    let merged = size
        .from_update
        .get(cid)
        .map_or(update, |older| update.over(*older));
    size.from_update.insert(cid.to_owned(), merged);
    grow_to_limits(&seams, size, live).await
}

/// Grows the VM at a container's Create for the limits its spec sets (it is
/// in `live`), so the container has room from its first instruction, as
/// Kata does; an Update later goes through [`grow_for`].
pub async fn grow_for_create(
    seams: Seams<'_>,
    size: &mut VmSize,
    live: &[(String, String)],
) -> Result<()> {
    refresh(seams.sandbox, size, live).await;
    grow_to_limits(&seams, size, live).await
}

/// Forgets containers no longer `live`; reads the specs of new ones.
async fn refresh(sb: &str, size: &mut VmSize, live: &[(String, String)]) {
    size.from_spec
        .retain(|id, _| live.iter().any(|(l, _)| l == id));
    size.from_update
        .retain(|id, _| live.iter().any(|(l, _)| l == id));
    for (id, bundle) in live {
        if !size.from_spec.contains_key(id) {
            let needs = spec_needs(sb, id, bundle).await;
            size.from_spec.insert(id.clone(), needs);
        }
    }
}

async fn grow_to_limits(
    seams: &Seams<'_>,
    size: &mut VmSize,
    live: &[(String, String)],
) -> Result<()> {
    let (cpus, mem) = size.total(live);
    grow_vcpus(seams, size, cpus).await?;
    grow_memory(seams, size, mem).await
}

/// Hot-plugs vCPUs up to `cpus` (clamped to the maximum) and has the guest
/// online them.
async fn grow_vcpus(seams: &Seams<'_>, size: &mut VmSize, cpus: u32) -> Result<()> {
    let sb = seams.sandbox;
    if cpus > size.vcpus {
        let target = cpus.min(size.max_vcpus);
        if target < cpus {
            tracing::warn!(
                sandbox = sb,
                wanted = cpus,
                max = size.max_vcpus,
                "vCPUs clamped to the maximum"
            );
        }
        if target > size.vcpus {
            let reached = seams.vm.resize_vcpus(target).await?;
            let added = reached.saturating_sub(size.vcpus);
            tracing::info!(
                sandbox = sb,
                from = size.vcpus,
                to = reached,
                "vCPUs hot-plugged"
            );
            size.vcpus = reached;
            if added > 0 {
                seams
                    .agent
                    .online_cpu_mem(protocols::agent::OnlineCPUMemRequest {
                        wait: true,
                        nb_cpus: added,
                        cpu_only: true,
                        ..Default::default()
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

/// Hot-plugs one DIMM (whole memory blocks, within the maximum and the
/// free slots) when the limits need more than `size.memory_mib`.
async fn grow_memory(seams: &Seams<'_>, size: &mut VmSize, mem: u32) -> Result<()> {
    let sb = seams.sandbox;
    if mem > size.memory_mib {
        let room = size.max_memory_mib.saturating_sub(size.memory_mib);
        let wanted = (mem - size.memory_mib).div_ceil(MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB;
        let add = wanted.min(room / MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB);
        if add < wanted || size.slots_left == 0 {
            tracing::warn!(
                sandbox = sb,
                wanted_mib = mem,
                max_mib = size.max_memory_mib,
                slots = size.slots_left,
                "memory clamped to the maximum"
            );
        }
        if add > 0 && size.slots_left > 0 {
            seams.vm.add_memory(add).await?;
            size.memory_mib += add;
            size.slots_left -= 1;
            tracing::info!(
                sandbox = sb,
                added_mib = add,
                total_mib = size.memory_mib,
                "memory hot-plugged"
            );
            seams
                .agent
                .online_cpu_mem(protocols::agent::OnlineCPUMemRequest {
                    wait: false,
                    nb_cpus: 0,
                    cpu_only: false,
                    ..Default::default()
                })
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_replace_only_the_limits_they_set() {
        let spec = Needs::from_limits(Some(150_000), Some(100_000), Some(300 << 20));
        assert_eq!(
            spec,
            Needs {
                cpus: Some(2),
                memory_mib: Some(300)
            }
        );
        // Memory only: the spec's CPU quota still counts.
        let update = Needs::from_limits(None, Some(100_000), Some(1));
        assert_eq!(
            update.over(spec),
            Needs {
                cpus: Some(2),
                memory_mib: Some(1)
            }
        );
        // Negative = unlimited: no longer needs anything.
        let unlimited = Needs::from_limits(Some(-1), None, Some(-1));
        assert_eq!(
            unlimited.over(spec),
            Needs {
                cpus: Some(0),
                memory_mib: Some(0)
            }
        );
    }
}
