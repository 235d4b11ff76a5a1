//! Task.State, Kill, Wait, Connect, Shutdown.

use protocols::containerd::api;
use protocols::protobuf::MessageField;

use super::TaskService;
use crate::error::{Error, Result};
use crate::process::ProcessState;

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
        sandbox
            .agent
            .signal_process(&container.id, &target, req.signal)
            .await?;
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
