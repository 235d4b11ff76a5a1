//! Running a command in the guest the way the shim does: a sandbox whose
//! containers' rootfs come over virtio-fs, a busybox container per command,
//! its stdout read until the agent ends the stream, its exit status.

use std::path::Path;
use std::time::Duration;

use agent_client::testing;
use protocols::agent::{
    CreateContainerRequest, ReadStreamRequest, RemoveContainerRequest, StartContainerRequest,
    WaitProcessRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

/// CreateSandbox with the virtio-fs share mounted where container rootfs live.
pub async fn create_sandbox(agent: &AgentServiceClient, id: &str) -> Result<(), String> {
    let req = testing::shared_fs_sandbox(id);
    agent
        .create_sandbox(ctx(), &req)
        .await
        .map(|_| ())
        .map_err(|e| format!("create sandbox: {e}"))
}

/// Creates and starts container `cid` running `args` (the sandbox must exist).
pub async fn start(
    agent: &AgentServiceClient,
    shared: &Path,
    cid: &str,
    args: &[&str],
) -> Result<(), String> {
    testing::busybox_rootfs(shared, cid)
        .map_err(|e| format!("busybox rootfs of {cid} in {}: {e}", shared.display()))?;
    let req = CreateContainerRequest {
        container_id: cid.into(),
        exec_id: cid.into(),
        OCI: Some(testing::busybox_spec(cid, args)).into(),
        ..Default::default()
    };
    agent
        .create_container(ctx(), &req)
        .await
        .map_err(|e| format!("create container {cid}: {e}"))?;
    let req = StartContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    agent
        .start_container(ctx(), &req)
        .await
        .map(|_| ())
        .map_err(|e| format!("start container {cid}: {e}"))
}

/// Runs `args` in a new container `cid` to its end: (stdout, exit status).
/// The container is removed afterwards.
pub async fn run(
    agent: &AgentServiceClient,
    shared: &Path,
    cid: &str,
    args: &[&str],
) -> Result<(String, i32), String> {
    start(agent, shared, cid, args).await?;
    let mut out = Vec::new();
    let req = ReadStreamRequest {
        container_id: cid.into(),
        len: 4096,
        ..Default::default()
    };
    // The agent ends the stream with an error once the process closed it.
    while let Ok(chunk) = agent.read_stdout(ctx(), &req).await {
        out.extend(chunk.data);
    }
    let req = WaitProcessRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    let status = agent
        .wait_process(ctx(), &req)
        .await
        .map_err(|e| format!("wait {cid}: {e}"))?
        .status;
    let req = RemoveContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    agent
        .remove_container(ctx(), &req)
        .await
        .map_err(|e| format!("remove {cid}: {e}"))?;
    Ok((String::from_utf8_lossy(&out).into_owned(), status))
}
