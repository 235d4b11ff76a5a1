//! The `Agent` seam: a ttrpc client of the kata guest agent over vsock or
//! hybrid vsock, with dialing backoff and deadlines. Knows nothing about QEMU.
//!
//! [`connect`] dials (10 ms backoff doubling to 200 ms, each attempt bounded)
//! until `Health.Check` answers; on timeout the error carries the last dial
//! error and the guest console tail. Ordinary RPCs of [`KataAgent`] have a
//! deadline ([`DEFAULT_RPC_TIMEOUT`]); WaitProcess, ReadStdout/ReadStderr,
//! WriteStdin and GetOOMEvent block by design. A read error is end of stream
//! (`Ok(None)`), as upstream agents signal EOF with an error. Agent statuses
//! keep their ttrpc code ([`Error::code`]).
//!
//! [`FakeAgent`] scripts answers for the shim's tests; [`watch`] has the OOM
//! and health loops. `tests/vm.rs` talks to the real guest agent when
//! `KATA_GUEST_IMAGE_DIR` is set.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use protocols::agent;
use protocols::health;

pub mod dial;
pub mod fake;
pub mod kata;
pub mod testing;
pub mod watch;

pub use fake::FakeAgent;
pub use kata::{KataAgent, DEFAULT_RPC_TIMEOUT};
pub use watch::{spawn_health_monitor, spawn_oom_watcher};

pub use dial::DialError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "agent not reachable at {addr} within {timeout:?}: {last_error}; console tail:\n{console}"
    )]
    ConnectTimeout {
        addr: String,
        timeout: Duration,
        last_error: Box<LastAttempt>,
        console: String,
    },
    /// An error status returned by the agent (code kept so the shim can map
    /// it), shown as `agent: CODE: message`.
    #[error("agent: {}", RpcMessage(.0))]
    Rpc(#[from] protocols::ttrpc::Error),
}

/// Why the last attempt of [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LastAttempt {
    #[error("no attempt made")]
    NotMade,
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("health check: {0}")]
    HealthCheck(Box<Error>),
}

/// A ttrpc error as a person reads it: a status is its code's name and its
/// message (ttrpc's own Display prints the `Status` struct's Debug form).
struct RpcMessage<'a>(&'a protocols::ttrpc::Error);

impl std::fmt::Display for RpcMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            protocols::ttrpc::Error::RpcStatus(s) => {
                write!(f, "{}: {}", code_name(s.code()), s.message())
            }
            other => write!(f, "{other}"),
        }
    }
}

/// The gRPC name of a status code, as containerd and ctr spell it.
pub fn code_name(code: protocols::ttrpc::Code) -> &'static str {
    use protocols::ttrpc::Code;
    match code {
        Code::OK => "OK",
        Code::CANCELLED => "CANCELLED",
        Code::UNKNOWN => "UNKNOWN",
        Code::INVALID_ARGUMENT => "INVALID_ARGUMENT",
        Code::DEADLINE_EXCEEDED => "DEADLINE_EXCEEDED",
        Code::NOT_FOUND => "NOT_FOUND",
        Code::ALREADY_EXISTS => "ALREADY_EXISTS",
        Code::PERMISSION_DENIED => "PERMISSION_DENIED",
        Code::RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
        Code::FAILED_PRECONDITION => "FAILED_PRECONDITION",
        Code::ABORTED => "ABORTED",
        Code::OUT_OF_RANGE => "OUT_OF_RANGE",
        Code::UNIMPLEMENTED => "UNIMPLEMENTED",
        Code::INTERNAL => "INTERNAL",
        Code::UNAVAILABLE => "UNAVAILABLE",
        Code::DATA_LOSS => "DATA_LOSS",
        Code::UNAUTHENTICATED => "UNAUTHENTICATED",
    }
}

impl Error {
    /// The ttrpc status code the agent answered with, if it answered with one.
    pub fn code(&self) -> Option<protocols::ttrpc::Code> {
        match self {
            Error::Rpc(protocols::ttrpc::Error::RpcStatus(s)) => Some(s.code()),
            _ => None,
        }
    }

    /// An `Rpc` error with the given status (for fakes and tests).
    pub fn status(code: protocols::ttrpc::Code, message: impl ToString) -> Self {
        Error::Rpc(protocols::ttrpc::Error::RpcStatus(
            protocols::ttrpc::get_status(code, message),
        ))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Vsock { cid: u32, port: u32 },
    Hybrid { uds_path: PathBuf, port: u32 },
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Address::Hybrid { uds_path, port } => {
                write!(f, "hvsock://{}:{port}", uds_path.display())
            }
        }
    }
}

fn unimplemented<T>(method: &str) -> Result<T> {
    Err(Error::status(
        protocols::ttrpc::Code::UNIMPLEMENTED,
        format!("{method} not implemented by this agent"),
    ))
}

/// The agent operations the shim uses. Implemented by [`KataAgent`] and by fakes in tests.
/// Methods after `read_stderr` have defaults answering UNIMPLEMENTED, so other
/// implementations only need the core set.
#[async_trait]
pub trait Agent: Send + Sync {
    async fn check(&self) -> Result<()>;
    async fn create_sandbox(&self, req: agent::CreateSandboxRequest) -> Result<()>;
    async fn destroy_sandbox(&self) -> Result<()>;
    async fn create_container(&self, req: agent::CreateContainerRequest) -> Result<()>;
    async fn start_container(&self, container_id: &str) -> Result<()>;
    async fn remove_container(&self, container_id: &str, timeout_secs: u32) -> Result<()>;
    async fn signal_process(&self, container_id: &str, exec_id: &str, signal: u32) -> Result<()>;
    /// Blocks until the process exits; returns its wait status code.
    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32>;
    /// Returns the next chunk; `Ok(None)` at end of stream.
    async fn read_stdout(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Option<Vec<u8>>>;
    async fn read_stderr(
        &self,
        container_id: &str,
        exec_id: &str,
        len: u32,
    ) -> Result<Option<Vec<u8>>>;

    /// Agent and protocol versions.
    async fn version(&self) -> Result<health::VersionCheckResponse> {
        unimplemented("Version")
    }
    async fn exec_process(&self, _req: agent::ExecProcessRequest) -> Result<()> {
        unimplemented("ExecProcess")
    }
    /// Writes to the process's stdin; returns how many bytes were taken. Blocks (no deadline).
    async fn write_stdin(&self, _container_id: &str, _exec_id: &str, _data: &[u8]) -> Result<u32> {
        unimplemented("WriteStdin")
    }
    async fn close_stdin(&self, _container_id: &str, _exec_id: &str) -> Result<()> {
        unimplemented("CloseStdin")
    }
    async fn tty_win_resize(
        &self,
        _container_id: &str,
        _exec_id: &str,
        _rows: u32,
        _columns: u32,
    ) -> Result<()> {
        unimplemented("TtyWinResize")
    }
    /// Freezes the container's processes (cgroup freezer in the guest).
    async fn pause_container(&self, _container_id: &str) -> Result<()> {
        unimplemented("PauseContainer")
    }
    async fn resume_container(&self, _container_id: &str) -> Result<()> {
        unimplemented("ResumeContainer")
    }
    async fn update_container(&self, _req: agent::UpdateContainerRequest) -> Result<()> {
        unimplemented("UpdateContainer")
    }
    /// Onlines hot-plugged vCPUs and memory in the guest.
    async fn online_cpu_mem(&self, _req: agent::OnlineCPUMemRequest) -> Result<()> {
        unimplemented("OnlineCPUMem")
    }
    async fn stats_container(&self, _container_id: &str) -> Result<agent::StatsContainerResponse> {
        unimplemented("StatsContainer")
    }
    async fn list_processes(
        &self,
        _req: agent::ListProcessesRequest,
    ) -> Result<agent::ListProcessesResponse> {
        unimplemented("ListProcesses")
    }
    /// Blocks until a container is OOM-killed; returns its id.
    async fn get_oom_event(&self) -> Result<String> {
        unimplemented("GetOOMEvent")
    }
    /// Configures the guest NIC whose MAC is `iface.hwAddr` (name, MTU, addresses, up).
    async fn update_interface(
        &self,
        _iface: protocols::types::Interface,
    ) -> Result<protocols::types::Interface> {
        unimplemented("UpdateInterface")
    }
    /// Replaces the guest's routes with `routes`; answers the routes now in place.
    async fn update_routes(
        &self,
        _routes: Vec<protocols::types::Route>,
    ) -> Result<Vec<protocols::types::Route>> {
        unimplemented("UpdateRoutes")
    }
    /// Adds (or replaces) static neighbour entries in the guest.
    async fn add_arp_neighbors(
        &self,
        _neighbors: Vec<protocols::types::ARPNeighbor>,
    ) -> Result<()> {
        unimplemented("AddARPNeighbors")
    }
    async fn list_interfaces(&self) -> Result<Vec<protocols::types::Interface>> {
        unimplemented("ListInterfaces")
    }
    async fn list_routes(&self) -> Result<Vec<protocols::types::Route>> {
        unimplemented("ListRoutes")
    }
}

/// Most time one dial attempt (connect + handshake) may take.
const DIAL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// One pending hybrid-vsock CONNECT (see `connect_with_rpc_timeout`).
const HYBRID_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most time the health check of one attempt may take.
const CHECK_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Dials the agent until it answers a health check or `timeout` passes.
/// `console_tail` is called on failure so the error shows what the guest printed.
pub async fn connect(
    addr: &Address,
    timeout: Duration,
    console_tail: &(dyn Fn() -> String + Send + Sync),
) -> Result<Box<dyn Agent>> {
    connect_with_rpc_timeout(addr, timeout, DEFAULT_RPC_TIMEOUT, console_tail)
        .await
        .map(|a| Box::new(a) as Box<dyn Agent>)
}

/// [`connect`] returning the concrete agent, whose ordinary RPCs get `rpc_timeout`.
pub async fn connect_with_rpc_timeout(
    addr: &Address,
    timeout: Duration,
    rpc_timeout: Duration,
    console_tail: &(dyn Fn() -> String + Send + Sync),
) -> Result<KataAgent> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    let mut last_error = LastAttempt::NotMade;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        attempts += 1;
        let remaining = deadline - now;
        // A hybrid-vsock CONNECT stays pending until the guest's vsock is
        // up; re-dialing every second can leave vhost-device-vsock mute for
        // the rest of the boot (seen about 1 boot in 15 here), while one
        // CONNECT can also get lost under heavy load: wait long enough for a
        // loaded boot, then dial again.
        let attempt = match addr {
            Address::Hybrid { .. } => remaining.min(HYBRID_ATTEMPT_TIMEOUT),
            Address::Vsock { .. } => remaining.min(DIAL_ATTEMPT_TIMEOUT),
        };
        match dial::dial(addr, attempt).await {
            Ok(client) => {
                let agent = KataAgent::new(client, rpc_timeout);
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                match agent
                    .check_within(remaining.min(CHECK_ATTEMPT_TIMEOUT))
                    .await
                {
                    Ok(resp) => {
                        tracing::info!(
                            %addr,
                            attempts,
                            elapsed = ?started.elapsed(),
                            status = ?resp.status,
                            "agent answered health check"
                        );
                        return Ok(agent);
                    }
                    Err(e) => last_error = LastAttempt::HealthCheck(Box::new(e)),
                }
            }
            Err(e) => last_error = LastAttempt::Dial(e),
        }
        tracing::trace!(%addr, attempts, "dial failed: {last_error}");
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(backoff.min(remaining)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    tracing::warn!(%addr, attempts, "agent not reachable: {last_error}");
    Err(Error::ConnectTimeout {
        addr: addr.to_string(),
        timeout,
        last_error: Box::new(last_error),
        console: console_tail(),
    })
}

#[cfg(test)]
mod tests {
    use protocols::ttrpc::{self, Code};

    use super::*;

    #[test]
    fn agent_status_displays_code_and_message() {
        let e = Error::status(Code::FAILED_PRECONDITION, "container c1 is not running");
        assert_eq!(e.code(), Some(Code::FAILED_PRECONDITION));
        assert_eq!(
            e.to_string(),
            "agent: FAILED_PRECONDITION: container c1 is not running"
        );
        let e = Error::Rpc(ttrpc::Error::Socket("broken pipe".into()));
        assert_eq!(e.code(), None);
        assert_eq!(e.to_string(), "agent: socket err: broken pipe");
    }

    #[test]
    fn connect_timeout_names_the_last_failure() {
        let e = Error::ConnectTimeout {
            addr: "vsock://3:1024".into(),
            timeout: Duration::from_secs(1),
            last_error: Box::new(LastAttempt::HealthCheck(Box::new(Error::status(
                Code::UNAVAILABLE,
                "booting",
            )))),
            console: "tail".into(),
        };
        assert_eq!(
            e.to_string(),
            "agent not reachable at vsock://3:1024 within 1s: health check: agent: \
             UNAVAILABLE: booting; console tail:\ntail"
        );
    }
}
