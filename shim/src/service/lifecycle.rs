//! Task.Start, the exit watchers, Task.Delete, and what happens when the VM dies.

use std::sync::Arc;
use std::time::Duration;

use protocols::containerd::api;
use protocols::containerd::events::task::{TaskDelete, TaskExit, TaskStart};
use protocols::protobuf::MessageField;

use super::{Container, TaskService};
use crate::drain;
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::hooks;
use crate::io::{copy_in, copy_out, open_outputs, Progress, Stream};
use crate::process::{Process, ProcessState};
use crate::sandbox::Sandbox;

/// SIGKILL, for the agent's SignalProcess.
const SIGKILL: u32 = 9;
/// Exit status reported for processes lost with their VM (SIGKILL).
const VM_GONE_STATUS: u32 = 128 + 9;
/// How long a SIGKILLed init waits for the guest's OOM report (the guest
/// checks its cgroups' memory.events twice a second).
const OOM_GRACE: Duration = Duration::from_millis(1200);

/// Reports of one container's OOM closer together than this are one event.
const OOM_REPEAT: Duration = Duration::from_secs(1);
/// Pause after a dropped OOM report (unknown id or repeat): a guest that
/// floods them gets at most ~100 round trips a second of the shim's time.
const OOM_FLOOD_PAUSE: Duration = Duration::from_millis(10);

/// Containers the guest reported OOM for, so exits can wait for the report.
/// Only ids of this sandbox's containers are recorded, and a deleted
/// container is forgotten: the set is bounded by the live containers.
#[derive(Default)]
pub struct OomTracker {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    changed: tokio::sync::Notify,
}

impl OomTracker {
    pub fn record(&self, cid: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cid.to_owned());
        self.changed.notify_waiters();
    }

    /// Forgets a deleted container.
    pub fn forget(&self, cid: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cid);
    }

    /// How many containers are recorded.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Waits until `cid` was reported or `timeout` passes.
    pub async fn wait_for(&self, cid: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(cid)
            {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

impl TaskService {
    pub(super) async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let (container, process) = self.process(&req.id, &req.exec_id)?;
        if process.state() != ProcessState::Created {
            return Err(Error::FailedPrecondition(format!(
                "process {:?} of container {:?} was already started",
                req.exec_id, req.id
            )));
        }
        let sandbox = self.live_sandbox().await?;
        if req.exec_id.is_empty() {
            // nerdctl and Docker fill the netns from hooks, CNI may add an
            // address later: what appeared since boot reaches the guest
            // before the container runs.
            sandbox.sync_network().await?;
            let t = std::time::Instant::now();
            sandbox.agent.start_container(&container.id).await?;
            crate::sandbox::phase(&sandbox.id, "start_container", t);
            self.run_later_hooks(
                &container,
                hooks::Phase::Poststart,
                Self::task_pid(&sandbox),
            )
            .await;
        } else {
            self.start_exec(&sandbox, &container, &req.exec_id).await?;
        }
        if !process.set_running() {
            return Err(Error::FailedPrecondition(format!(
                "container {:?} was already started",
                req.id
            )));
        }
        self.spawn_watcher(
            sandbox.clone(),
            container.clone(),
            process,
            req.exec_id.clone(),
        );
        let pid = Self::task_pid(&sandbox);
        tracing::info!(container = %container.id, exec = %req.exec_id, "started");
        if req.exec_id.is_empty() {
            self.events
                .publish(crate::events::TaskEvent::Start(TaskStart {
                    container_id: container.id.clone(),
                    pid,
                    ..Default::default()
                }))
                .await;
        } else {
            self.events
                .publish(crate::events::TaskEvent::ExecStarted(
                    protocols::containerd::events::task::TaskExecStarted {
                        container_id: container.id.clone(),
                        exec_id: req.exec_id.clone(),
                        pid,
                        ..Default::default()
                    },
                ))
                .await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Copies the process's stdio, waits for its exit, then publishes
    /// TaskExit — after the output is drained, as containerd expects, unless
    /// processes that outlived the exit hold it open (see `drain`).
    // Over 80 lines on purpose: one process's exit path in containerd's order (wait, drain output,
    // kill what is left, publish TaskExit, poststop hooks).
    fn spawn_watcher(
        &self,
        sandbox: Arc<Sandbox>,
        container: Arc<Container>,
        process: Arc<Process>,
        exec_id: String,
    ) {
        let agent = sandbox.agent.clone();
        let events = self.events.clone();
        let pid = Self::task_pid(&sandbox);
        let namespace = self.namespace.clone();
        let ooms = self.ooms.clone();
        tokio::spawn(async move {
            let cid = container.id.clone();
            let stdio = process.stdio.clone();
            if stdio.stdin.is_empty() {
                // The guest gives every process a stdin pipe: close it so a
                // program reading stdin sees EOF instead of blocking.
                if let Err(e) = agent.close_stdin(&cid, &exec_id).await {
                    tracing::debug!(container = %cid, exec = %exec_id, error = %e, "CloseStdin failed");
                }
            } else {
                tokio::spawn(copy_in(
                    agent.clone(),
                    cid.clone(),
                    exec_id.clone(),
                    process.clone(),
                ));
            }
            let (out_sink, err_sink) = open_outputs(
                &stdio.stdout,
                &stdio.stderr,
                stdio.terminal,
                &cid,
                &namespace,
            )
            .await;
            let ids = (cid.clone(), exec_id.clone());
            let progress = [Progress::default(), Progress::default()];
            let mut copies = vec![tokio::spawn(copy_out(
                agent.clone(),
                ids.clone(),
                Stream::Stdout,
                out_sink,
                progress[0].clone(),
            ))];
            if !stdio.terminal {
                copies.push(tokio::spawn(copy_out(
                    agent.clone(),
                    ids,
                    Stream::Stderr,
                    err_sink,
                    progress[1].clone(),
                )));
            }
            let status = match agent.wait_process(&cid, &exec_id).await {
                Ok(s) => u32::try_from(s).unwrap_or(255),
                Err(e) => {
                    tracing::warn!(container = %cid, exec = %exec_id, error = %e, "WaitProcess failed");
                    VM_GONE_STATUS
                }
            };
            if exec_id.is_empty()
                && container
                    .shares_pid_ns
                    .load(std::sync::atomic::Ordering::SeqCst)
            {
                // runc's KillAll: the container's init is not PID 1 of its
                // namespace, so the kernel does not end what it leaves
                // behind; those processes would hold its stdout open and
                // live on unseen.
                if let Err(e) = agent.signal_process(&cid, "", SIGKILL).await {
                    tracing::debug!(container = %cid, error = %e, "killing what the init left");
                } else {
                    tracing::info!(container = %cid, "init exited in a shared pid namespace: killed what it left");
                }
            }
            // An OOM kill ends the process with SIGKILL; the guest reports
            // the OOM on its own channel, possibly a moment later. containerd
            // must hear TaskOOM before TaskExit to call it OOMKilled. Only
            // containers with a memory limit wait (the usual OOM victims).
            if status == VM_GONE_STATUS
                && exec_id.is_empty()
                && container
                    .memory_limited
                    .load(std::sync::atomic::Ordering::SeqCst)
            {
                ooms.wait_for(&cid, OOM_GRACE).await;
            }
            let drained = drain::after_exit(copies, &progress, drain::QUIET, drain::CAP).await;
            if drained != drain::Drain::Complete {
                tracing::warn!(container = %cid, exec = %exec_id, ?drained,
                    "output still held open by processes that outlived the exit; reporting the exit");
            }
            publish_exit(events.as_ref(), &container, &process, &exec_id, pid, status).await;
        });
    }

    /// When the VM dies, every live process is reported exited, and the
    /// VM's helpers and directories are cleaned up; containerd then deletes
    /// the tasks and shuts the daemon down, or the daemon exits by itself
    /// after [`super::VM_GONE_LINGER`].
    pub(super) fn watch_vm(&self, sandbox: Arc<Sandbox>) {
        let exit = self.exit.clone();
        let linger = self.vm_gone_linger;
        let events = self.events.clone();
        let map = self.containers.clone();
        let slot = self.sandbox_slot();
        tokio::spawn(async move {
            sandbox.vm.wait_exit().await;
            let mut guard = slot.lock().await;
            let ours = guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, &sandbox));
            if !ours {
                return; // stopped on purpose
            }
            tracing::warn!(sandbox = %sandbox.id, "VM exited unexpectedly");
            guard.take();
            drop(guard);
            // Clean up first (bounded), so that when containerd hears of
            // the exits nothing of the VM is left.
            let cleanup = async {
                sandbox.stop_port_forward().await;
                if let Err(e) = sandbox.vm.stop().await {
                    tracing::warn!(sandbox = %sandbox.id, error = %e, "stopping dead VM's helpers");
                }
                if let Err(e) = sandbox.mounter.teardown(&sandbox.paths).await {
                    tracing::warn!(sandbox = %sandbox.id, error = %e, "cleaning up after dead VM");
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), cleanup)
                .await
                .is_err()
            {
                tracing::warn!(sandbox = %sandbox.id, "cleanup after VM death timed out");
            }
            let pid = TaskService::task_pid(&sandbox);
            let live: Vec<Arc<Container>> = map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            for c in live {
                let execs: Vec<(String, Arc<Process>)> = c
                    .execs()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (eid, p) in execs {
                    publish_exit(events.as_ref(), &c, &p, &eid, pid, VM_GONE_STATUS).await;
                }
                publish_exit(events.as_ref(), &c, &c.init, "", pid, VM_GONE_STATUS).await;
            }
            tokio::time::sleep(linger).await;
            tracing::info!(sandbox = %sandbox.id, "VM gone and containerd did not shut the daemon down: exiting");
            exit.notify_one();
        });
    }

    /// Forwards the agent's OOM notifications as TaskOOM until the agent
    /// goes away. The guest's word is data: an id that is not one of this
    /// sandbox's containers is dropped, repeats within [`OOM_REPEAT`] are
    /// one event, and a flood is slowed to [`OOM_FLOOD_PAUSE`] per report.
    pub(super) fn watch_oom(&self, sandbox: Arc<Sandbox>) {
        let events = self.events.clone();
        let ooms = self.ooms.clone();
        let map = self.containers.clone();
        tokio::spawn(async move {
            let mut last: std::collections::HashMap<String, tokio::time::Instant> =
                std::collections::HashMap::new();
            loop {
                let cid = match sandbox.agent.get_oom_event().await {
                    Ok(cid) => cid,
                    Err(e) => {
                        tracing::debug!(sandbox = %sandbox.id, error = %e, "OOM event loop ends");
                        return;
                    }
                };
                let known = map
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&cid);
                let now = tokio::time::Instant::now();
                last.retain(|c, _| {
                    map.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains_key(c)
                });
                let repeat = last
                    .get(&cid)
                    .is_some_and(|t| now.duration_since(*t) < OOM_REPEAT);
                if !known || repeat {
                    tracing::debug!(sandbox = %sandbox.id, known, "OOM report dropped");
                    tokio::time::sleep(OOM_FLOOD_PAUSE).await;
                    continue;
                }
                last.insert(cid.clone(), now);
                tracing::info!(container = %cid, "OOM in the guest");
                events
                    .publish(crate::events::TaskEvent::Oom(
                        protocols::containerd::events::task::TaskOOM {
                            container_id: cid.clone(),
                            ..Default::default()
                        },
                    ))
                    .await;
                ooms.record(&cid);
            }
        });
    }

    pub(super) async fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let (container, process) = self.process(&req.id, &req.exec_id)?;
        if process.state() == ProcessState::Running {
            return Err(Error::FailedPrecondition(format!(
                "process {:?} of container {:?} is running; kill it first",
                req.exec_id, req.id
            )));
        }
        let sandbox = self.running_sandbox().await;
        let pid = sandbox.as_deref().map(Self::task_pid).unwrap_or(0);
        let (exit_status, exited_at) = match process.state() {
            ProcessState::Stopped {
                exit_status,
                exited_at,
            } => (exit_status, Some(exited_at)),
            _ => (0, None),
        };
        let exited_at = MessageField::from_option(exited_at);
        if !req.exec_id.is_empty() {
            container.execs().remove(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid,
                exit_status,
                exited_at,
                ..Default::default()
            });
        }
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
            self.mounter
                .unmount_container(&sb.paths, &container.id)
                .await?;
        }
        self.run_later_hooks(&container, hooks::Phase::Poststop, pid)
            .await;
        let now_empty = {
            let mut map = self.containers();
            map.remove(&container.id);
            map.is_empty()
        };
        self.ooms.forget(&container.id);
        // A Sandbox API pod keeps its VM until StopSandbox.
        if now_empty && !self.pod_owns_vm() {
            self.teardown_sandbox().await?;
        }
        tracing::info!(container = %container.id, "container deleted");
        self.events
            .publish(crate::events::TaskEvent::Delete(TaskDelete {
                container_id: container.id.clone(),
                pid,
                exit_status,
                exited_at: exited_at.clone(),
                ..Default::default()
            }))
            .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    /// poststart/poststop hooks: their failures are logged, never fatal.
    async fn run_later_hooks(&self, container: &Container, phase: hooks::Phase, pid: u32) {
        if !container
            .has_hooks
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let spec = match crate::spec::load(std::path::Path::new(&container.bundle)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(container = %container.id, error = %e, "{} hooks not run", phase.name());
                return;
            }
        };
        let ctx = hooks::Context {
            spec: &spec,
            id: &container.id,
            bundle: &container.bundle,
            pid,
        };
        if let Err(e) = hooks::run(&ctx, &[phase]).await {
            tracing::warn!(container = %container.id, error = %e, "{} hooks", phase.name());
        }
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

/// Records the exit and publishes TaskExit, once per process.
pub(super) async fn publish_exit(
    events: &dyn EventSink,
    c: &Container,
    p: &Process,
    exec_id: &str,
    pid: u32,
    status: u32,
) {
    if !p.set_exited(status) {
        return;
    }
    let exited_at = match p.state() {
        ProcessState::Stopped { exited_at, .. } => MessageField::some(exited_at),
        _ => MessageField::none(),
    };
    tracing::info!(container = %c.id, exec = exec_id, status, "process exited");
    // For the init process containerd (and CRI) look the exit up by container id.
    let id = if exec_id.is_empty() {
        c.id.clone()
    } else {
        exec_id.to_owned()
    };
    events
        .publish(crate::events::TaskEvent::Exit(TaskExit {
            container_id: c.id.clone(),
            id,
            pid,
            exit_status: status,
            exited_at,
            ..Default::default()
        }))
        .await;
}
