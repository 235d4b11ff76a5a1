//! [`KataAgent`]: the [`Agent`] seam over the generated ttrpc clients.

use std::time::Duration;

use async_trait::async_trait;
use protocols::agent;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health;
use protocols::health_ttrpc::HealthClient;
use protocols::ttrpc;
use protocols::ttrpc::context::{self, Context};

use crate::{Agent, Result};

/// Deadline of an ordinary RPC.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected kata agent.
#[derive(Clone)]
pub struct KataAgent {
    agent: AgentServiceClient,
    health: HealthClient,
    rpc_timeout: Duration,
}

impl std::fmt::Debug for KataAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KataAgent")
            .field("rpc_timeout", &self.rpc_timeout)
            .finish_non_exhaustive()
    }
}

impl KataAgent {
    pub fn new(client: ttrpc::r#async::Client, rpc_timeout: Duration) -> Self {
        Self {
            agent: AgentServiceClient::new(client.clone()),
            health: HealthClient::new(client),
            rpc_timeout,
        }
    }

    fn ctx(&self) -> Context {
        context::with_duration(self.rpc_timeout)
    }

    /// No deadline: for calls that block by design (WaitProcess, ReadStdout, ...).
    fn unbounded() -> Context {
        Context::default()
    }

    /// Health check with an explicit deadline (used while dialing).
    pub async fn check_within(&self, timeout: Duration) -> Result<health::HealthCheckResponse> {
        Ok(self
            .health
            .check(
                context::with_duration(timeout),
                &health::CheckRequest::new(),
            )
            .await?)
    }

    async fn read_stream(
        &self,
        stdout: bool,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Option<Vec<u8>>> {
        let req = agent::ReadStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            len,
            ..Default::default()
        };
        let res = if stdout {
            self.agent.read_stdout(Self::unbounded(), &req).await
        } else {
            self.agent.read_stderr(Self::unbounded(), &req).await
        };
        match res {
            Ok(r) => Ok(Some(r.data)),
            Err(e) => {
                // Upstream agents signal end of stream with an error.
                tracing::debug!(
                    container = container_id,
                    exec = exec_id,
                    stream = if stdout { "stdout" } else { "stderr" },
                    "end of stream: {e}"
                );
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl Agent for KataAgent {
    async fn check(&self) -> Result<()> {
        self.check_within(self.rpc_timeout).await.map(drop)
    }

    async fn version(&self) -> Result<health::VersionCheckResponse> {
        Ok(self
            .health
            .version(self.ctx(), &health::CheckRequest::new())
            .await?)
    }

    async fn create_sandbox(&self, req: agent::CreateSandboxRequest) -> Result<()> {
        self.agent.create_sandbox(self.ctx(), &req).await?;
        Ok(())
    }

    async fn destroy_sandbox(&self) -> Result<()> {
        self.agent
            .destroy_sandbox(self.ctx(), &agent::DestroySandboxRequest::new())
            .await?;
        Ok(())
    }

    async fn create_container(&self, req: agent::CreateContainerRequest) -> Result<()> {
        self.agent.create_container(self.ctx(), &req).await?;
        Ok(())
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        let req = agent::StartContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.agent.start_container(self.ctx(), &req).await?;
        Ok(())
    }

    async fn remove_container(&self, container_id: &str, timeout_secs: u32) -> Result<()> {
        let req = agent::RemoveContainerRequest {
            container_id: container_id.to_string(),
            timeout: timeout_secs,
            ..Default::default()
        };
        // The agent may take the whole grace period: give the RPC that much more.
        let ctx =
            context::with_duration(self.rpc_timeout + Duration::from_secs(u64::from(timeout_secs)));
        self.agent.remove_container(ctx, &req).await?;
        Ok(())
    }

    async fn exec_process(&self, req: agent::ExecProcessRequest) -> Result<()> {
        self.agent.exec_process(self.ctx(), &req).await?;
        Ok(())
    }

    async fn signal_process(&self, container_id: &str, exec_id: &str, signal: u32) -> Result<()> {
        let req = agent::SignalProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            ..Default::default()
        };
        self.agent.signal_process(self.ctx(), &req).await?;
        Ok(())
    }

    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32> {
        let req = agent::WaitProcessRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        Ok(self
            .agent
            .wait_process(Self::unbounded(), &req)
            .await?
            .status)
    }

    async fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Option<Vec<u8>>> {
        self.read_stream(true, container_id, exec_id, len).await
    }

    async fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Option<Vec<u8>>> {
        self.read_stream(false, container_id, exec_id, len).await
    }

    async fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> Result<u32> {
        let req = agent::WriteStreamRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            data: data.to_vec(),
            ..Default::default()
        };
        // Blocks while the process does not read its stdin: no deadline.
        Ok(self.agent.write_stdin(Self::unbounded(), &req).await?.len)
    }

    async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let req = agent::CloseStdinRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.agent.close_stdin(self.ctx(), &req).await?;
        Ok(())
    }

    async fn tty_win_resize(
        &self,
        container_id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<()> {
        let req = agent::TtyWinResizeRequest {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            row: rows,
            column: columns,
            ..Default::default()
        };
        self.agent.tty_win_resize(self.ctx(), &req).await?;
        Ok(())
    }

    async fn pause_container(&self, container_id: &str) -> Result<()> {
        let req = agent::PauseContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.agent.pause_container(self.ctx(), &req).await?;
        Ok(())
    }

    async fn resume_container(&self, container_id: &str) -> Result<()> {
        let req = agent::ResumeContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        self.agent.resume_container(self.ctx(), &req).await?;
        Ok(())
    }

    async fn update_container(&self, req: agent::UpdateContainerRequest) -> Result<()> {
        self.agent.update_container(self.ctx(), &req).await?;
        Ok(())
    }

    async fn update_interface(
        &self,
        iface: protocols::types::Interface,
    ) -> Result<protocols::types::Interface> {
        let req = agent::UpdateInterfaceRequest {
            interface: Some(iface).into(),
            ..Default::default()
        };
        Ok(self.agent.update_interface(self.ctx(), &req).await?)
    }

    async fn update_routes(
        &self,
        routes: Vec<protocols::types::Route>,
    ) -> Result<Vec<protocols::types::Route>> {
        let req = agent::UpdateRoutesRequest {
            routes: Some(agent::Routes {
                Routes: routes,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        Ok(self.agent.update_routes(self.ctx(), &req).await?.Routes)
    }

    async fn add_arp_neighbors(&self, neighbors: Vec<protocols::types::ARPNeighbor>) -> Result<()> {
        let req = agent::AddARPNeighborsRequest {
            neighbors: Some(agent::ARPNeighbors {
                ARPNeighbors: neighbors,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.agent.add_arp_neighbors(self.ctx(), &req).await?;
        Ok(())
    }

    async fn list_interfaces(&self) -> Result<Vec<protocols::types::Interface>> {
        let req = agent::ListInterfacesRequest::default();
        Ok(self
            .agent
            .list_interfaces(self.ctx(), &req)
            .await?
            .Interfaces)
    }

    async fn list_routes(&self) -> Result<Vec<protocols::types::Route>> {
        let req = agent::ListRoutesRequest::default();
        Ok(self.agent.list_routes(self.ctx(), &req).await?.Routes)
    }

    async fn online_cpu_mem(&self, req: agent::OnlineCPUMemRequest) -> Result<()> {
        self.agent.online_cpu_mem(self.ctx(), &req).await?;
        Ok(())
    }

    async fn stats_container(&self, container_id: &str) -> Result<agent::StatsContainerResponse> {
        let req = agent::StatsContainerRequest {
            container_id: container_id.to_string(),
            ..Default::default()
        };
        Ok(self.agent.stats_container(self.ctx(), &req).await?)
    }

    async fn list_processes(
        &self,
        req: agent::ListProcessesRequest,
    ) -> Result<agent::ListProcessesResponse> {
        Ok(self.agent.list_processes(self.ctx(), &req).await?)
    }

    async fn get_oom_event(&self) -> Result<String> {
        // Blocks until a container hits its memory limit.
        let ev = self
            .agent
            .get_oom_event(Self::unbounded(), &agent::GetOOMEventRequest::new())
            .await?;
        Ok(ev.container_id)
    }
}
