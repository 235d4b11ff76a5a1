//! Task.Start, the exit watcher, Task.Delete, and what happens when the VM dies.

use std::sync::Arc;
use std::time::Duration;

use protocols::containerd::api;
use protocols::containerd::events::task::{TaskDelete, TaskExit, TaskStart};
use protocols::containerd::topics;
use protocols::protobuf::MessageField;

use super::{Container, TaskService};
use crate::error::{Error, Result};
use crate::io::{copy_out, Stream};
use crate::process::ProcessState;
use crate::rootfs;
use crate::sandbox::Sandbox;

/// Exit status reported for processes lost with their VM (SIGKILL).
const VM_GONE_STATUS: u32 = 128 + 9;

impl TaskService {
    pub(super) async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let (container, process) = self.process(&req.id, &req.exec_id)?;
        if process.state() != ProcessState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} was already started",
                req.id
            )));
        }
        let sandbox = self
            .running_sandbox()
            .await
            .ok_or_else(|| Error::FailedPrecondition("sandbox is not running".into()))?;
        sandbox.agent.start_container(&container.id).await?;
        if !process.set_running() {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} was already started",
                req.id
            )));
        }
        self.spawn_exit_watcher(sandbox.clone(), container.clone());
        let pid = Self::task_pid(&sandbox);
        tracing::info!(container = %container.id, "container started");
        self.events
            .publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: container.id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Copies the init process's output, waits for its exit, then publishes
    /// TaskExit — after the output is drained, as containerd expects.
    fn spawn_exit_watcher(&self, sandbox: Arc<Sandbox>, container: Arc<Container>) {
        let agent = sandbox.agent.clone();
        let events = self.events.clone();
        let pid = Self::task_pid(&sandbox);
        tokio::spawn(async move {
            let cid = container.id.clone();
            let stdio = container.init.stdio.clone();
            let out = tokio::spawn(copy_out(
                agent.clone(),
                cid.clone(),
                String::new(),
                Stream::Stdout,
                stdio.stdout,
            ));
            let err = tokio::spawn(copy_out(
                agent.clone(),
                cid.clone(),
                String::new(),
                Stream::Stderr,
                stdio.stderr,
            ));
            let status = match agent.wait_process(&cid, "").await {
                Ok(s) => u32::try_from(s).unwrap_or(255),
                Err(e) => {
                    tracing::warn!(container = %cid, error = %e, "WaitProcess failed");
                    VM_GONE_STATUS
                }
            };
            let _ = out.await;
            let _ = err.await;
            publish_exit(events.as_ref(), &container, pid, status).await;
        });
    }

    /// When the VM dies, every live process is reported exited.
    pub(super) fn watch_vm(&self, sandbox: Arc<Sandbox>) {
        let events = self.events.clone();
        let map = self.containers.clone();
        tokio::spawn(async move {
            sandbox.vm.wait_exit().await;
            tracing::warn!(sandbox = %sandbox.id, "VM exited");
            let pid = TaskService::task_pid(&sandbox);
            let live: Vec<Arc<Container>> = map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            for c in live {
                publish_exit(events.as_ref(), &c, pid, VM_GONE_STATUS).await;
            }
        });
    }

    pub(super) async fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let (container, process) = self.process(&req.id, &req.exec_id)?;
        if process.state() == ProcessState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is running; kill it first",
                req.id
            )));
        }
        let sandbox = self.running_sandbox().await;
        let pid = sandbox.as_deref().map(Self::task_pid).unwrap_or(0);
        if let Some(sb) = &sandbox {
            match tokio::time::timeout(
                Duration::from_secs(15),
                sb.agent.remove_container(&container.id, 10),
            )
            .await
            {
                Ok(Err(e)) => {
                    tracing::warn!(container = %container.id, error = %e, "RemoveContainer failed")
                }
                Err(_) => tracing::warn!(container = %container.id, "RemoveContainer timed out"),
                Ok(Ok(())) => {}
            }
            rootfs::unmount_rootfs(sb.paths.container_dir(&container.id)).await?;
        }
        let (exit_status, exited_at) = match process.state() {
            ProcessState::Stopped {
                exit_status,
                exited_at,
            } => (exit_status, Some(exited_at)),
            _ => (0, None),
        };
        let now_empty = {
            let mut map = self.containers();
            map.remove(&container.id);
            map.is_empty()
        };
        if now_empty {
            self.teardown_sandbox().await?;
        }
        tracing::info!(container = %container.id, "container deleted");
        let exited_at = MessageField::from_option(exited_at);
        self.events
            .publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: container.id.clone(),
                    pid,
                    exit_status,
                    exited_at: exited_at.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    /// Stops the VM and removes the sandbox's directory once no container is left.
    async fn teardown_sandbox(&self) -> Result<()> {
        let mut guard = self.sandbox.lock().await;
        if let Some(sb) = guard.take() {
            sb.shutdown().await?;
            tracing::info!(sandbox = %sb.id, "sandbox stopped");
        }
        Ok(())
    }
}

async fn publish_exit(events: &dyn crate::events::EventSink, c: &Container, pid: u32, status: u32) {
    if !c.init.set_exited(status) {
        return;
    }
    let exited_at = match c.init.state() {
        ProcessState::Stopped { exited_at, .. } => MessageField::some(exited_at),
        _ => MessageField::none(),
    };
    tracing::info!(container = %c.id, status, "container exited");
    events
        .publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid,
                exit_status: status,
                exited_at,
                ..Default::default()
            }),
        )
        .await;
}
