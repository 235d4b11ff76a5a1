//! Task.Pause, Resume, Stats, Update and Pids.

use protocols::containerd::api;
use protocols::containerd::events::task::{TaskPaused, TaskResumed};
use protocols::containerd::topics;
use protocols::protobuf::MessageField;
use std::sync::atomic::Ordering;

use super::TaskService;
use crate::error::{Error, Result};
use crate::process::ProcessState;

impl TaskService {
    pub(super) async fn do_pause(&self, req: api::PauseRequest) -> Result<api::Empty> {
        let container = self.container(&req.id)?;
        if container.init.state() != ProcessState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not running",
                req.id
            )));
        }
        if container.is_paused() {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is already paused",
                req.id
            )));
        }
        let sandbox = self.live_sandbox().await?;
        if container.id == sandbox.id {
            // The sandbox container stands for the whole pod: stop the VM.
            sandbox.vm.pause().await?;
        } else {
            sandbox.agent.pause_container(&container.id).await?;
        }
        container.paused.store(true, Ordering::SeqCst);
        self.events
            .publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: container.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::Empty::default())
    }

    pub(super) async fn do_resume(&self, req: api::ResumeRequest) -> Result<api::Empty> {
        let container = self.container(&req.id)?;
        if !container.is_paused() {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not paused",
                req.id
            )));
        }
        let sandbox = self.live_sandbox().await?;
        if container.id == sandbox.id {
            sandbox.vm.resume().await?;
        } else {
            sandbox.agent.resume_container(&container.id).await?;
        }
        container.paused.store(false, Ordering::SeqCst);
        self.events
            .publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: container.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::Empty::default())
    }

    pub(super) async fn do_stats(&self, req: api::StatsRequest) -> Result<api::StatsResponse> {
        let container = self.container(&req.id)?;
        if container.is_paused() && container.id == self.live_sandbox().await?.id {
            return Err(Error::FailedPrecondition("the sandbox VM is paused".into()));
        }
        let sandbox = self.live_sandbox().await?;
        let stats = sandbox.agent.stats_container(&container.id).await?;
        let any = crate::stats::to_metrics_any(&stats, crate::stats::host_cgroup_v2());
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    pub(super) async fn do_update(&self, req: api::UpdateTaskRequest) -> Result<api::Empty> {
        let container = self.container(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("update carries no resources".into()))?;
        let resources = crate::resources::parse_update(any)?;
        let limited = resources.Memory.Limit > 0;
        if container.init.state() != ProcessState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not running",
                req.id
            )));
        }
        let sandbox = self.live_sandbox().await?;
        grow_for(&sandbox, &container.id, &resources).await?;
        sandbox
            .agent
            .update_container(protocols::agent::UpdateContainerRequest {
                container_id: container.id.clone(),
                resources: MessageField::some(resources),
                ..Default::default()
            })
            .await?;
        if limited {
            container.memory_limited.store(true, Ordering::SeqCst);
        }
        Ok(api::Empty::default())
    }

    pub(super) async fn do_pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse> {
        let container = self.container(&req.id)?;
        let pid = match self.running_sandbox().await {
            Some(sb) => Self::task_pid(&sb),
            None => 0,
        };
        let mut processes = Vec::new();
        if container.init.state() == ProcessState::Running {
            // Guest processes have no host pid; the VM's stands for them.
            processes.push(protocols::containerd::types::task::ProcessInfo {
                pid,
                ..Default::default()
            });
        }
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }
}

/// Granularity of memory hotplug (the guest's memory block).
const MEMORY_BLOCK_MIB: u32 = 128;

/// The VM's current size, its hotplug room, and what each container's
/// limits need (from Update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub max_vcpus: u32,
    pub max_memory_mib: u32,
    pub slots_left: u32,
    /// Per container: (vCPUs, MiB) its limits ask for.
    pub needs: std::collections::HashMap<String, (u32, u32)>,
}

impl VmSize {
    pub fn of(q: &crate::config::QemuConfig) -> Self {
        let hotplug = q.options.memory_hotplug;
        Self {
            vcpus: q.vcpus,
            memory_mib: q.memory_mib,
            max_vcpus: q.options.max_vcpus.unwrap_or(q.vcpus).max(q.vcpus),
            max_memory_mib: hotplug.map_or(q.memory_mib, |h| h.max_mib.max(q.memory_mib)),
            slots_left: hotplug.map_or(0, |h| h.slots),
            needs: Default::default(),
        }
    }
}

/// vCPUs (quota/period rounded up) and MiB (limit rounded up) `r` asks for.
fn needs_of(r: &protocols::oci::LinuxResources) -> (u32, u32) {
    let cpus = r
        .CPU
        .as_ref()
        .filter(|c| c.Quota > 0 && c.Period > 0)
        .map_or(0, |c| {
            u32::try_from((c.Quota as u64).div_ceil(c.Period)).unwrap_or(u32::MAX)
        });
    let mem = r.Memory.as_ref().filter(|m| m.Limit > 0).map_or(0, |m| {
        u32::try_from((m.Limit as u64).div_ceil(1 << 20)).unwrap_or(u32::MAX)
    });
    (cpus, mem)
}

/// Grows the VM (vCPUs, then memory; the guest onlines them) when the
/// containers' limits, with `cid`'s new ones, exceed it. Above the
/// configured maxima it grows to them and logs, as kata does.
async fn grow_for(
    sandbox: &crate::sandbox::Sandbox,
    cid: &str,
    resources: &protocols::oci::LinuxResources,
) -> Result<()> {
    let mut size = sandbox.size.lock().await;
    size.needs.insert(cid.to_owned(), needs_of(resources));
    let (cpus, mem): (u32, u32) = size.needs.values().fold((0, 0), |(c, m), (dc, dm)| {
        (c.saturating_add(*dc), m.saturating_add(*dm))
    });
    let sb = sandbox.id.as_str();
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
            let reached = sandbox.vm.resize_vcpus(target).await?;
            let added = reached.saturating_sub(size.vcpus);
            tracing::info!(
                sandbox = sb,
                from = size.vcpus,
                to = reached,
                "vCPUs hot-plugged"
            );
            size.vcpus = reached;
            if added > 0 {
                sandbox
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
            sandbox.vm.add_memory(add).await?;
            size.memory_mib += add;
            size.slots_left -= 1;
            tracing::info!(
                sandbox = sb,
                added_mib = add,
                total_mib = size.memory_mib,
                "memory hot-plugged"
            );
            sandbox
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
