//! The `Agent` seam: a ttrpc client of the kata guest agent over vsock or
//! hybrid vsock, with dialing backoff and deadlines. Knows nothing about QEMU.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use protocols::agent;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("agent not reachable at {addr} within {timeout:?}: {last_error}; console tail:\n{console}")]
    ConnectTimeout {
        addr: String,
        timeout: Duration,
        last_error: String,
        console: String,
    },
    /// An error status returned by the agent (code kept so the shim can map it).
    #[error("agent: {0}")]
    Rpc(#[from] protocols::ttrpc::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Vsock { cid: u32, port: u32 },
    Hybrid { uds_path: PathBuf, port: u32 },
}

/// The agent operations the shim uses. Implemented by [`KataAgent`] and by fakes in tests.
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
    async fn read_stdout(&self, container_id: &str, exec_id: &str, len: u32) -> Result<Option<Vec<u8>>>;
    async fn read_stderr(&self, container_id: &str, exec_id: &str, len: u32) -> Result<Option<Vec<u8>>>;
}

/// Dials the agent until it answers a health check or `timeout` passes.
/// `console_tail` is called on failure so the error shows what the guest printed.
pub async fn connect(
    _addr: &Address,
    _timeout: Duration,
    _console_tail: &(dyn Fn() -> String + Send + Sync),
) -> Result<Box<dyn Agent>> {
    unimplemented!("agent-client connect")
}
