//! Kubernetes CRI through containerd's CRI plugin with runtime handler
//! `kata`: the containerd/CNI configuration ([`config`]), a CRI v1 gRPC
//! client over containerd's unix socket ([`client`]), CRI log parsing
//! ([`logs`]), exec/attach streaming ([`stream`]), a loopback image registry
//! ([`registry`]), cleanup of what a failed test left ([`cleanup`]) and
//! leak checks scoped to a test's own pods ([`vms`]).

pub mod cleanup;
pub mod client;
pub mod config;
pub mod logs;
pub mod portforward;
pub mod registry;
pub mod stream;
pub mod vms;

pub use client::Cri;

/// The RuntimeClass handler name registered in containerd's CRI config.
pub const HANDLER: &str = "kata";
/// containerd namespace the CRI plugin uses.
pub const NAMESPACE: &str = "k8s.io";
/// `sandbox_image`: built offline by `tests/scripts/pause-image.sh`.
pub const PAUSE_IMAGE: &str = "docker.io/library/kata-pause:latest";

/// A private containerd serving CRI (of `dist`) and a client of it.
pub async fn setup_on(dist: &crate::Dist) -> anyhow::Result<(crate::Containerd, Cri)> {
    let dist = dist.clone();
    let ctd = tokio::task::spawn_blocking(move || crate::Containerd::start_cri_on(&dist)).await??;
    connect(ctd).await
}

/// [`setup_on`] the system's containerd.
pub async fn setup() -> anyhow::Result<(crate::Containerd, Cri)> {
    setup_on(&crate::Dist::system()).await
}

/// A CRI client of `ctd` (pod logs under its directory).
pub async fn connect(ctd: crate::Containerd) -> anyhow::Result<(crate::Containerd, Cri)> {
    let cri = Cri::connect(&ctd.socket, &ctd.dir.join("pod-logs")).await?;
    Ok((ctd, cri))
}

/// Stops containerd, then checks that none of the test's pods left a VM,
/// helper, mount or directory, and no process mentions its containerd.
pub async fn assert_no_leftovers(ctd: crate::Containerd, c: &Cri) {
    let scope = ctd.dir.clone();
    let pods = c.pods.clone();
    let left = tokio::task::spawn_blocking(move || {
        drop(ctd);
        pods.settle_and_check(&scope)
    })
    .await
    .expect("join");
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// A pod with one long-running container; returns (pod config, pod, container).
pub async fn pod_with_sleeper(
    c: &mut Cri,
    name: &str,
) -> anyhow::Result<(k8s_cri::v1::PodSandboxConfig, String, String)> {
    let pod_cfg = c.pod_config(name);
    let pod = c.run_pod(&pod_cfg).await?;
    let cfg = Cri::container_config("sleeper", crate::IMAGE, &["sleep", "3600"]);
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    Ok((pod_cfg, pod, id))
}
