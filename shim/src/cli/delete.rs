//! `delete`: containerd's clean-up call after the daemon is gone. Removes
//! whatever the dead daemon left (VM, helpers, mounts, directories) and
//! prints a DeleteResponse.

use std::io::Write;
use std::path::Path;

use super::flags::{self, Flags};
use protocols::containerd::api::DeleteResponse;
use protocols::protobuf::well_known_types::timestamp::Timestamp;
use protocols::protobuf::{Message, MessageField};

use crate::persist::{SandboxPaths, RUN_ROOT};
use crate::share;

pub async fn run(flags: &Flags) -> anyhow::Result<()> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir()?
    } else {
        flags.bundle.clone().into()
    };
    let sandbox_id = super::sandbox_id_of(&bundle, &flags.id);
    cleanup(Path::new(RUN_ROOT), &sandbox_id, &flags.id).await?;
    if flags.id == sandbox_id {
        let address = flags::socket_address(&flags.address, &flags.namespace, &sandbox_id);
        let path = address.trim_start_matches("unix://");
        if std::os::unix::net::UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
    }
    let resp = DeleteResponse {
        pid: 0,
        exit_status: 128 + 9,
        exited_at: MessageField::some(Timestamp::now()),
        ..Default::default()
    };
    let mut out = std::io::stdout();
    out.write_all(&resp.write_to_bytes()?)?;
    out.flush()?;
    Ok(())
}

/// Cleans up container `id` of sandbox `sandbox_id`; the whole sandbox when
/// `id` is the sandbox itself.
pub async fn cleanup(root: &Path, sandbox_id: &str, id: &str) -> anyhow::Result<()> {
    let mut paths = SandboxPaths::new(root, sandbox_id);
    let mut cgroup_dirs = Vec::new();
    let mut net = None;
    // The state file, when there is one, is authoritative about where things are.
    if let Some(state) = crate::persist::read(&paths).await? {
        tracing::info!(sandbox = %state.sandbox_id, dead_shim = state.shim_pid, "cleaning up");
        paths = state.paths;
        cgroup_dirs = state.cgroup_dirs;
        net = state.network;
    }
    if id == sandbox_id {
        hypervisor::cleanup_run_dir(&paths.vm).await?;
        // QEMU is gone: its taps can go (the netns may be gone too).
        for t in net.iter().flat_map(|n| n.taps.iter().map(move |t| (n, t))) {
            if let Err(e) = crate::network::tap::detach(&t.0.netns, &t.1.tap, &t.1.iface).await {
                tracing::debug!(tap = %t.1.tap, "removing a tap: {e}");
            }
        }
        tokio::task::spawn_blocking(move || {
            // The VM and its helpers are gone: their cgroups are empty.
            crate::host_cgroup::remove_dirs(&cgroup_dirs);
            share::teardown(&paths)
        })
        .await??;
    } else {
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || share::unmount_container(&paths, &id)).await??;
    }
    Ok(())
}
