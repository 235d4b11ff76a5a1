//! Running a command in the guest the way the shim does: a sandbox whose
//! containers' rootfs come over virtio-fs, a busybox container per command,
//! its stdout read until the agent ends the stream, its exit status.

use std::path::Path;
use std::time::Duration;

use protocols::agent::{
    CreateContainerRequest, CreateSandboxRequest, ReadStreamRequest, RemoveContainerRequest,
    StartContainerRequest, Storage, WaitProcessRequest,
};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;

/// Where the guest mounts the host's shared directory.
const SHARED: &str = "/run/kata-containers/shared/containers";
/// Each agent call is bounded by this (TCG, shared machine).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

/// CreateSandbox with the virtio-fs share mounted where container rootfs live.
pub async fn create_sandbox(agent: &AgentServiceClient, id: &str) -> Result<(), String> {
    let req = CreateSandboxRequest {
        hostname: id.into(),
        sandbox_id: id.into(),
        storages: vec![Storage {
            driver: "virtio-fs".into(),
            fstype: "virtiofs".into(),
            source: "kataShared".into(),
            mount_point: format!("{SHARED}/"),
            ..Default::default()
        }],
        ..Default::default()
    };
    agent
        .create_sandbox(ctx(), &req)
        .await
        .map(|_| ())
        .map_err(|e| format!("create sandbox: {e}"))
}

/// A busybox rootfs for container `cid` in the host's shared directory.
fn make_rootfs(shared: &Path, cid: &str) -> Result<(), String> {
    let root = shared.join(cid).join("rootfs");
    let io = |what: &str, e: std::io::Error| format!("{what} in {}: {e}", root.display());
    for d in ["bin", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| io(d, e))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| io("busybox", e))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(|e| io("sh", e))?;
    Ok(())
}

fn spec(cid: &str, args: &[&str]) -> oci::Spec {
    let mount = |destination: &str, type_: &str| oci::Mount {
        destination: destination.into(),
        source: type_.into(),
        type_: type_.into(),
        ..Default::default()
    };
    oci::Spec {
        Version: "1.1.0".into(),
        Hostname: "c".into(),
        Process: Some(oci::Process {
            Args: args.iter().map(|s| s.to_string()).collect(),
            Env: vec!["PATH=/bin".into()],
            Cwd: "/".into(),
            User: Some(oci::User::default()).into(),
            ..Default::default()
        })
        .into(),
        Root: Some(oci::Root {
            Path: format!("{SHARED}/{cid}/rootfs"),
            ..Default::default()
        })
        .into(),
        // sysfs: the guest's CPUs and memory blocks, as the kernel sees them.
        Mounts: vec![mount("/proc", "proc"), mount("/sys", "sysfs")],
        Linux: Some(oci::Linux {
            Namespaces: ["pid", "mount", "ipc", "uts"]
                .iter()
                .map(|t| oci::LinuxNamespace {
                    Type: t.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// Creates and starts container `cid` running `args` (the sandbox must exist).
pub async fn start(
    agent: &AgentServiceClient,
    shared: &Path,
    cid: &str,
    args: &[&str],
) -> Result<(), String> {
    make_rootfs(shared, cid)?;
    let req = CreateContainerRequest {
        container_id: cid.into(),
        exec_id: cid.into(),
        OCI: Some(spec(cid, args)).into(),
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
