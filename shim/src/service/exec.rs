//! Task.Exec, ResizePty and CloseIO.

use std::sync::Arc;

use protocols::agent::ExecProcessRequest;
use protocols::containerd::api;
use protocols::containerd::events::task::TaskExecAdded;
use protocols::protobuf::MessageField;

use super::{Container, TaskService};
use crate::error::{Error, Result};
use crate::process::{Process, ProcessState, Stdio};
use crate::sandbox::Sandbox;

impl TaskService {
    pub(super) async fn do_exec(&self, req: api::ExecProcessRequest) -> Result<api::Empty> {
        let container = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec id is empty".into()));
        }
        if !matches!(container.init.state(), ProcessState::Running) {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} is not running",
                req.id
            )));
        }
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec has no process spec".into()))?;
        let oci: oci_spec::runtime::Process = serde_json::from_slice(&any.value).map_err(|e| {
            Error::InvalidArgument(format!("exec process spec is not a valid OCI process: {e}"))
        })?;
        let mut spec = crate::spec::process(&oci)?;
        spec.Terminal = req.terminal;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut execs = container.execs();
            if execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "exec {:?} already exists in container {:?}",
                    req.exec_id, req.id
                )));
            }
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Process::new_exec(stdio, spec)),
            );
        }
        self.events
            .publish(crate::events::TaskEvent::ExecAdded(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }))
            .await;
        Ok(api::Empty::default())
    }

    /// Asks the agent to run a created exec.
    pub(super) async fn start_exec(
        &self,
        sandbox: &Sandbox,
        container: &Container,
        exec_id: &str,
    ) -> Result<()> {
        let process = container
            .execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id:?} not found")))?;
        let spec = process.exec_spec.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!("exec {exec_id:?} has no process spec"))
        })?;
        sandbox
            .agent
            .exec_process(ExecProcessRequest {
                container_id: container.id.clone(),
                exec_id: exec_id.to_owned(),
                process: MessageField::some(spec),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    pub(super) async fn do_resize_pty(&self, req: api::ResizePtyRequest) -> Result<api::Empty> {
        let (container, process) = self.process(&req.id, &req.exec_id)?;
        if !process.stdio.terminal {
            return Err(Error::FailedPrecondition(format!(
                "process {:?} of {:?} has no terminal",
                req.exec_id, req.id
            )));
        }
        if process.state() != ProcessState::Running {
            return Err(Error::FailedPrecondition("process is not running".into()));
        }
        let sandbox = self.live_sandbox().await?;
        let exec_id = if req.exec_id.is_empty() {
            container.id.clone()
        } else {
            req.exec_id.clone()
        };
        sandbox
            .agent
            .tty_win_resize(&container.id, &exec_id, req.height, req.width)
            .await?;
        Ok(api::Empty::default())
    }

    pub(super) async fn do_close_io(&self, req: api::CloseIORequest) -> Result<api::Empty> {
        let (_container, process) = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            process.stdin_closed.notify_one();
        }
        Ok(api::Empty::default())
    }
}
