//! Task.State, Kill, Wait, Connect, Shutdown.

use protocols::containerd::api;
use protocols::protobuf::MessageField;

use std::sync::Arc;

use super::TaskService;
use crate::error::{Error, Result};
use crate::process::ProcessState;
use crate::sandbox::Sandbox;

const SIGKILL: u32 = 9;

/// Stops the VM from the host. The VM watcher then reports every live
/// process exited (status 137) and cleans up, as after any VM death.
async fn stop_vm(sandbox: Arc<Sandbox>) {
    if let Err(e) = sandbox.vm.stop().await {
        tracing::warn!(sandbox = %sandbox.id, error = %e, "stopping the VM");
    }
}

impl TaskService {
    pub(super) async fn do_state(&self, req: api::StateRequest) -> Result<api::StateResponse> {
        let (container, process) = self.process(&req.id, &req.exec_id)?;
        let pid = match self.running_sandbox().await {
            Some(sb) => Self::task_pid(&sb),
            None => 0,
        };
        let state = process.state();
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.clone(),
            pid,
            status: if req.exec_id.is_empty()
                && container.is_paused()
                && state == ProcessState::Running
            {
                protocols::containerd::api::Status::PAUSED.into()
            } else {
                state.status().into()
            },
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        if let ProcessState::Stopped {
            exit_status,
            exited_at,
        } = state
        {
            resp.exit_status = exit_status;
            resp.exited_at = MessageField::some(exited_at);
        }
        Ok(resp)
    }

    pub(super) async fn do_kill(&self, req: api::KillRequest) -> Result<api::Empty> {
        let (container, process) = self.process(&req.id, &req.exec_id)?;
        match process.state() {
            ProcessState::Stopped { .. } => {
                return Err(Error::NotFound(format!(
                    "process of {:?} has already exited",
                    req.id
                )))
            }
            ProcessState::Created if req.exec_id.is_empty() => {
                // Never started: there is no process to signal; it counts as exited.
                process.set_exited(128 + req.signal);
                return Ok(api::Empty::default());
            }
            _ => {}
        }
        let sandbox = self
            .running_sandbox()
            .await
            .ok_or_else(|| Error::FailedPrecondition("sandbox is not running".into()))?;
        // Empty exec id asks the agent for every process of the container.
        let target = if req.all {
            String::new()
        } else if req.exec_id.is_empty() {
            container.id.clone()
        } else {
            req.exec_id.clone()
        };
        // SIGKILL of the pod's own init (CRI's StopPodSandbox, the last
        // kill of a pod) must end the pod whatever the guest does: a guest
        // that does not answer, or answers and never reports the exit, gets
        // its VM stopped from the host, and every process is reported exited.
        let ends_pod =
            req.signal == SIGKILL && req.exec_id.is_empty() && container.id == sandbox.id;
        let signal = sandbox
            .agent
            .signal_process(&container.id, &target, req.signal);
        let limits = self.kill_timeouts;
        match tokio::time::timeout(limits.signal, signal).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if !ends_pod => return Err(e.into()),
            Err(_) if !ends_pod => {
                return Err(Error::DeadlineExceeded(format!(
                    "the guest did not answer signal {} for {:?} within {:?}",
                    req.signal, req.id, limits.signal
                )))
            }
            Ok(Err(e)) => {
                tracing::warn!(sandbox = %sandbox.id, error = %e, "SIGKILL of the pod failed in the guest; stopping the VM");
                stop_vm(sandbox).await;
                return Ok(api::Empty::default());
            }
            Err(_) => {
                tracing::warn!(sandbox = %sandbox.id, "the guest did not answer the pod's SIGKILL; stopping the VM");
                stop_vm(sandbox).await;
                return Ok(api::Empty::default());
            }
        }
        if ends_pod {
            tokio::spawn(async move {
                if tokio::time::timeout(limits.pod_exit, process.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(sandbox = %sandbox.id, after = ?limits.pod_exit, "no exit reported after the pod's SIGKILL; stopping the VM");
                    stop_vm(sandbox).await;
                }
            });
        }
        Ok(api::Empty::default())
    }

    pub(super) async fn do_wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse> {
        let (_container, process) = self.process(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = process.wait().await;
        Ok(api::WaitResponse {
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }

    pub(super) async fn do_connect(
        &self,
        req: api::ConnectRequest,
    ) -> Result<api::ConnectResponse> {
        let _ = self.container(&req.id)?;
        let task_pid = match self.running_sandbox().await {
            Some(sb) => Self::task_pid(&sb),
            None => 0,
        };
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    pub(super) async fn do_shutdown(&self, _req: api::ShutdownRequest) -> Result<api::Empty> {
        // A Sandbox API pod ends with ShutdownSandbox, not with its tasks.
        if self.containers().is_empty()
            && self.running_sandbox().await.is_none()
            && !self.pod_owns_vm()
        {
            self.exit.notify_one();
        } else {
            tracing::debug!("Shutdown ignored: containers remain");
        }
        Ok(api::Empty::default())
    }
}
