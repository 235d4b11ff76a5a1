//! [`FakeAgent`]: a scripted [`Agent`] for the shim's unit tests. It records
//! every call, fails the calls it is told to fail, and lets the test drive
//! process exits, output streams and OOM events.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use protocols::agent;
use protocols::health;
use protocols::ttrpc::Code;
use tokio::sync::Notify;

use crate::{Agent, Error, Result};

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Check,
    Version,
    CreateSandbox(agent::CreateSandboxRequest),
    DestroySandbox,
    CreateContainer(agent::CreateContainerRequest),
    StartContainer {
        container_id: String,
    },
    RemoveContainer {
        container_id: String,
        timeout_secs: u32,
    },
    ExecProcess(agent::ExecProcessRequest),
    SignalProcess {
        container_id: String,
        exec_id: String,
        signal: u32,
    },
    WaitProcess {
        container_id: String,
        exec_id: String,
    },
    ReadStdout {
        container_id: String,
        exec_id: String,
    },
    ReadStderr {
        container_id: String,
        exec_id: String,
    },
    WriteStdin {
        container_id: String,
        exec_id: String,
        data: Vec<u8>,
    },
    CloseStdin {
        container_id: String,
        exec_id: String,
    },
    UpdateInterface(protocols::types::Interface),
    UpdateRoutes(Vec<protocols::types::Route>),
    AddArpNeighbors(Vec<protocols::types::ARPNeighbor>),
    TtyWinResize {
        container_id: String,
        exec_id: String,
        rows: u32,
        columns: u32,
    },
    PauseContainer {
        container_id: String,
    },
    ResumeContainer {
        container_id: String,
    },
    UpdateContainer(agent::UpdateContainerRequest),
    OnlineCpuMem(agent::OnlineCPUMemRequest),
    StatsContainer {
        container_id: String,
    },
    ListProcesses(agent::ListProcessesRequest),
    GetOomEvent,
}

impl Call {
    /// The RPC's name as in the proto (`"CreateContainer"`, ...): the key for [`FakeAgent::fail_next`].
    pub fn method(&self) -> &'static str {
        match self {
            Call::Check => "Check",
            Call::Version => "Version",
            Call::CreateSandbox(_) => "CreateSandbox",
            Call::DestroySandbox => "DestroySandbox",
            Call::CreateContainer(_) => "CreateContainer",
            Call::StartContainer { .. } => "StartContainer",
            Call::RemoveContainer { .. } => "RemoveContainer",
            Call::ExecProcess(_) => "ExecProcess",
            Call::SignalProcess { .. } => "SignalProcess",
            Call::WaitProcess { .. } => "WaitProcess",
            Call::ReadStdout { .. } => "ReadStdout",
            Call::ReadStderr { .. } => "ReadStderr",
            Call::WriteStdin { .. } => "WriteStdin",
            Call::CloseStdin { .. } => "CloseStdin",
            Call::UpdateInterface(_) => "UpdateInterface",
            Call::UpdateRoutes(_) => "UpdateRoutes",
            Call::AddArpNeighbors(_) => "AddARPNeighbors",
            Call::TtyWinResize { .. } => "TtyWinResize",
            Call::PauseContainer { .. } => "PauseContainer",
            Call::ResumeContainer { .. } => "ResumeContainer",
            Call::UpdateContainer(_) => "UpdateContainer",
            Call::OnlineCpuMem(_) => "OnlineCPUMem",
            Call::StatsContainer { .. } => "StatsContainer",
            Call::ListProcesses(_) => "ListProcesses",
            Call::GetOomEvent => "GetOOMEvent",
        }
    }
}

type Key = (String, String);

#[derive(Debug, Default)]
struct Stream {
    chunks: VecDeque<Vec<u8>>,
    closed: bool,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    failures: HashMap<&'static str, VecDeque<(Code, String)>>,
    exits: HashMap<Key, i32>,
    stdout: HashMap<Key, Stream>,
    stderr: HashMap<Key, Stream>,
    ooms: VecDeque<String>,
    stats: Option<agent::StatsContainerResponse>,
    /// Methods that never answer (a frozen or hostile guest).
    hangs: std::collections::HashSet<&'static str>,
    /// ReadStdout/ReadStderr answer zero bytes at once, forever.
    empty_reads: bool,
}

/// A scripted agent. Clones share state, so a test can keep one and hand another to the shim.
#[derive(Debug, Clone, Default)]
pub struct FakeAgent {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

fn key(container_id: &str, exec_id: &str) -> Key {
    (container_id.to_string(), exec_id.to_string())
}

impl FakeAgent {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_waiters();
    }

    /// Records `call`; fails it if a failure is queued for its method.
    fn record(&self, call: Call) -> Result<()> {
        let mut s = self.lock();
        let method = call.method();
        s.calls.push(call);
        match s.failures.get_mut(method).and_then(VecDeque::pop_front) {
            Some((code, msg)) => Err(Error::status(code, msg)),
            None => Ok(()),
        }
    }

    /// Waits until `f` returns `Some`.
    async fn wait_for<T>(&self, mut f: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = f(&mut self.lock()) {
                return v;
            }
            notified.await;
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Names of the calls so far (`"CreateContainer"`, ...).
    pub fn methods(&self) -> Vec<&'static str> {
        self.lock().calls.iter().map(Call::method).collect()
    }

    /// Makes the next call of `method` (proto name, e.g. `"StartContainer"`) fail with `code`.
    pub fn fail_next(&self, method: &'static str, code: Code, message: &str) {
        self.update(|s| {
            s.failures
                .entry(method)
                .or_default()
                .push_back((code, message.to_string()))
        });
    }

    /// The process exits with `status`: WaitProcess answers, its streams end.
    pub fn exit_process(&self, container_id: &str, exec_id: &str, status: i32) {
        let k = key(container_id, exec_id);
        self.update(|s| {
            s.exits.insert(k.clone(), status);
            s.stdout.entry(k.clone()).or_default().closed = true;
            s.stderr.entry(k).or_default().closed = true;
        });
    }

    /// The process exits with `status` while other processes keep its
    /// stdout and stderr open: WaitProcess answers, the streams do not end.
    pub fn exit_process_output_held(&self, container_id: &str, exec_id: &str, status: i32) {
        let k = key(container_id, exec_id);
        self.update(|s| {
            s.exits.insert(k, status);
        });
    }

    /// Queues output the process wrote to stdout.
    pub fn push_stdout(&self, container_id: &str, exec_id: &str, data: &[u8]) {
        self.update(|s| {
            s.stdout
                .entry(key(container_id, exec_id))
                .or_default()
                .chunks
                .push_back(data.to_vec())
        });
    }

    pub fn push_stderr(&self, container_id: &str, exec_id: &str, data: &[u8]) {
        self.update(|s| {
            s.stderr
                .entry(key(container_id, exec_id))
                .or_default()
                .chunks
                .push_back(data.to_vec())
        });
    }

    /// Every later call of `method` never answers (a frozen or hostile guest).
    pub fn hang(&self, method: &'static str) {
        self.update(|s| {
            s.hangs.insert(method);
        });
    }

    /// ReadStdout and ReadStderr answer zero bytes, at once, forever.
    pub fn answer_reads_empty(&self) {
        self.update(|s| s.empty_reads = true);
    }

    /// Never returns if `method` was told to hang.
    async fn hang_point(&self, method: &'static str) {
        if self.lock().hangs.contains(method) {
            std::future::pending::<()>().await;
        }
    }

    /// Queues an OOM event for `container_id`.
    pub fn push_oom(&self, container_id: &str) {
        self.update(|s| s.ooms.push_back(container_id.to_string()));
    }

    /// The answer of StatsContainer (default: an empty response).
    pub fn set_stats(&self, stats: agent::StatsContainerResponse) {
        self.update(|s| s.stats = Some(stats));
    }

    async fn read(
        &self,
        stdout: bool,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Option<Vec<u8>> {
        let k = key(container_id, exec_id);
        let len = usize::try_from(len.max(1)).unwrap_or(usize::MAX);
        self.hang_point(if stdout { "ReadStdout" } else { "ReadStderr" })
            .await;
        self.wait_for(|s| {
            if s.empty_reads {
                return Some(Some(Vec::new()));
            }
            let stream = if stdout { &mut s.stdout } else { &mut s.stderr }
                .entry(k.clone())
                .or_default();
            match stream.chunks.pop_front() {
                Some(mut chunk) => {
                    if chunk.len() > len {
                        let rest = chunk.split_off(len);
                        stream.chunks.push_front(rest);
                    }
                    Some(Some(chunk))
                }
                None if stream.closed => Some(None),
                None => None,
            }
        })
        .await
    }
}

#[async_trait]
impl Agent for FakeAgent {
    async fn check(&self) -> Result<()> {
        self.record(Call::Check)
    }

    async fn version(&self) -> Result<health::VersionCheckResponse> {
        self.record(Call::Version)?;
        Ok(health::VersionCheckResponse {
            grpc_version: "fake".into(),
            agent_version: "fake".into(),
            ..Default::default()
        })
    }

    async fn create_sandbox(&self, req: agent::CreateSandboxRequest) -> Result<()> {
        self.hang_point("CreateSandbox").await;
        self.record(Call::CreateSandbox(req))
    }

    async fn destroy_sandbox(&self) -> Result<()> {
        self.hang_point("DestroySandbox").await;
        self.record(Call::DestroySandbox)
    }

    async fn create_container(&self, req: agent::CreateContainerRequest) -> Result<()> {
        // Recorded before it hangs: a test sees the call reached the guest.
        let answer = self.record(Call::CreateContainer(req));
        self.hang_point("CreateContainer").await;
        answer
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        self.record(Call::StartContainer {
            container_id: container_id.into(),
        })
    }

    async fn remove_container(&self, container_id: &str, timeout_secs: u32) -> Result<()> {
        self.hang_point("RemoveContainer").await;
        self.record(Call::RemoveContainer {
            container_id: container_id.into(),
            timeout_secs,
        })
    }

    async fn exec_process(&self, req: agent::ExecProcessRequest) -> Result<()> {
        self.record(Call::ExecProcess(req))
    }

    async fn signal_process(&self, container_id: &str, exec_id: &str, signal: u32) -> Result<()> {
        self.hang_point("SignalProcess").await;
        self.record(Call::SignalProcess {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            signal,
        })
    }

    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32> {
        self.hang_point("WaitProcess").await;
        self.record(Call::WaitProcess {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
        })?;
        let k = key(container_id, exec_id);
        Ok(self.wait_for(|s| s.exits.get(&k).copied()).await)
    }

    async fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Option<Vec<u8>>> {
        if self
            .record(Call::ReadStdout {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
            })
            .is_err()
        {
            return Ok(None);
        }
        Ok(self.read(true, container_id, exec_id, len).await)
    }

    async fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Option<Vec<u8>>> {
        if self
            .record(Call::ReadStderr {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
            })
            .is_err()
        {
            return Ok(None);
        }
        Ok(self.read(false, container_id, exec_id, len).await)
    }

    async fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> Result<u32> {
        self.record(Call::WriteStdin {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            data: data.to_vec(),
        })?;
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        self.record(Call::CloseStdin {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
        })
    }

    async fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<()> {
        self.record(Call::TtyWinResize {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            rows,
            columns,
        })
    }

    async fn pause_container(&self, container_id: &str) -> Result<()> {
        self.record(Call::PauseContainer {
            container_id: container_id.into(),
        })
    }

    async fn resume_container(&self, container_id: &str) -> Result<()> {
        self.record(Call::ResumeContainer {
            container_id: container_id.into(),
        })
    }

    async fn update_container(&self, req: agent::UpdateContainerRequest) -> Result<()> {
        self.record(Call::UpdateContainer(req))
    }

    async fn update_interface(
        &self,
        iface: protocols::types::Interface,
    ) -> Result<protocols::types::Interface> {
        self.record(Call::UpdateInterface(iface.clone()))?;
        Ok(iface)
    }

    async fn update_routes(
        &self,
        routes: Vec<protocols::types::Route>,
    ) -> Result<Vec<protocols::types::Route>> {
        self.record(Call::UpdateRoutes(routes.clone()))?;
        Ok(routes)
    }

    async fn add_arp_neighbors(&self, neighbors: Vec<protocols::types::ARPNeighbor>) -> Result<()> {
        self.record(Call::AddArpNeighbors(neighbors))
    }

    async fn online_cpu_mem(&self, req: agent::OnlineCPUMemRequest) -> Result<()> {
        self.record(Call::OnlineCpuMem(req))
    }

    async fn stats_container(&self, container_id: &str) -> Result<agent::StatsContainerResponse> {
        self.record(Call::StatsContainer {
            container_id: container_id.into(),
        })?;
        Ok(self.lock().stats.clone().unwrap_or_default())
    }

    async fn list_processes(
        &self,
        req: agent::ListProcessesRequest,
    ) -> Result<agent::ListProcessesResponse> {
        self.record(Call::ListProcesses(req))?;
        Ok(agent::ListProcessesResponse::default())
    }

    async fn get_oom_event(&self) -> Result<String> {
        self.hang_point("GetOOMEvent").await;
        self.record(Call::GetOomEvent)?;
        Ok(self.wait_for(|s| s.ooms.pop_front()).await)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn scripted_process_lifecycle() {
        let fake = FakeAgent::new();
        let agent: Box<dyn Agent> = Box::new(fake.clone());
        fake.fail_next("StartContainer", Code::NOT_FOUND, "no such container");
        let e = agent
            .start_container("c1")
            .await
            .expect_err("scripted failure");
        assert_eq!(e.code(), Some(Code::NOT_FOUND));
        agent.start_container("c1").await.expect("second start ok");

        fake.push_stdout("c1", "", b"hello world");
        assert_eq!(
            agent.read_stdout("c1", "", 5).await.expect("read"),
            Some(b"hello".to_vec())
        );
        assert_eq!(
            agent.read_stdout("c1", "", 100).await.expect("read"),
            Some(b" world".to_vec())
        );

        let waiter = {
            let fake = fake.clone();
            tokio::spawn(async move { fake.wait_process("c1", "").await })
        };
        let reader = {
            let fake = fake.clone();
            tokio::spawn(async move { fake.read_stderr("c1", "", 10).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        fake.exit_process("c1", "", 137);
        assert_eq!(waiter.await.expect("join").expect("wait"), 137);
        assert_eq!(reader.await.expect("join").expect("read"), None);
        assert_eq!(agent.read_stdout("c1", "", 100).await.expect("read"), None);

        fake.push_oom("c1");
        assert_eq!(agent.get_oom_event().await.expect("oom"), "c1");
        assert_eq!(
            fake.methods(),
            [
                "StartContainer",
                "StartContainer",
                "ReadStdout",
                "ReadStdout",
                "WaitProcess",
                "ReadStderr",
                "ReadStdout",
                "GetOOMEvent"
            ]
        );
    }
}
