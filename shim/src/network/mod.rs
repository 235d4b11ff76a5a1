//! Pod networking, host side: every interface of the pod's network
//! namespace (CNI's veth, a second network's, ...) gets a tap there that
//! carries its traffic to a virtio-net NIC of the VM with its MAC.
//!
//! Model (upstream kata's "tcfilter", [`tap`]): for each interface we create
//! `tap<N>_kata` in the same netns and redirect every frame between the
//! interface and the tap with tc `mirred`, so the guest NIC owns the
//! interface's addresses. QEMU opens taps by name, so it is started inside
//! the netns. The guest gets the addresses (IPv4 and IPv6), MTU, routes and
//! permanent neighbours through the agent's UpdateInterface, UpdateRoutes
//! and AddARPNeighbors ([`guest`]).
//!
//! The netns is read at boot and again at each container's Start
//! ([`pod::PodNet::sync`]): nerdctl and Docker fill it from OCI hooks, CNI
//! plugins may add an address later. Interfaces found after boot are
//! hot-plugged (q35; microvm has no hotplug: they are logged and left out),
//! changed addresses and routes are pushed to the guest.
//!
//! Everything runs `ip`/`tc` (iproute2) through `nsenter --net=<netns>`;
//! nothing touches the host's own namespace, and nothing the guest answers
//! decides what is run: the host acts on what the netns holds only.

use std::path::{Path, PathBuf};

use tokio::process::Command;

pub mod guest;
pub mod pod;
pub mod scan;
pub mod tap;

pub use pod::PodNet;
pub use scan::{scan, Interface, IpAddress, Neighbour, PodNetwork, Route};
pub use tap::is_our_tap;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("running {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("unexpected output of {cmd}: {source}")]
    Parse {
        cmd: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, NetworkError>;

/// The network namespace path of an OCI spec (CRI: `/var/run/netns/cni-…`).
pub fn netns_path(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
}

/// Runs `args` in `netns` (nsenter); its stdout, or the command's stderr
/// as the error. The one way the shim runs a tool in a pod's netns.
pub(crate) async fn in_netns(netns: &Path, args: &[&str]) -> Result<String> {
    let cmd = format!("nsenter --net={} {}", netns.display(), args.join(" "));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .await
        .map_err(|source| NetworkError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetworkError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
