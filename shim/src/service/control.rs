//! Task.Pause, Resume, Stats, Update and Pids.

use protocols::containerd::api;
use protocols::containerd::events::task::{TaskPaused, TaskResumed};
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
            .publish(crate::events::TaskEvent::Paused(TaskPaused {
                container_id: container.id.clone(),
                ..Default::default()
            }))
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
            .publish(crate::events::TaskEvent::Resumed(TaskResumed {
                container_id: container.id.clone(),
                ..Default::default()
            }))
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
        let resources = crate::oci_resources::parse_update(any)?;
        let limited = resources.Memory.Limit > 0;
        if container.init.state() != ProcessState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not running",
                req.id
            )));
        }
        let sandbox = self.live_sandbox().await?;
        // Every live container counts, with the limits its spec set at Create
        // unless an Update replaced them.
        let live: Vec<(String, String)> = self
            .containers()
            .values()
            .map(|c| (c.id.clone(), c.bundle.clone()))
            .collect();
        if !sandbox.static_resources {
            let mut size = sandbox.size.lock().await;
            let seams = crate::vmsize::Seams {
                sandbox: &sandbox.id,
                vm: sandbox.vm.as_ref(),
                agent: sandbox.agent.as_ref(),
            };
            crate::vmsize::grow_for(seams, &mut size, &container.id, &resources, &live).await?;
        }
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
