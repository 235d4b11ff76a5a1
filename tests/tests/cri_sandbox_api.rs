//! CRI on containerd 2.x with `sandboxer = "shim"`: containerd creates each
//! pod through the shim's Sandbox API (no pause container) and sends only
//! the app containers over the Task API. Runs on containerd 2.3.4.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::cri::client::{CONTAINER_EXITED, SANDBOX_NOTREADY, SANDBOX_READY};
use integration_tests::cri::{self, vms, Cri};
use integration_tests::{on_containerd, Containerd, Dist, IMAGE};
use k8s_cri::v1 as api;

on_containerd!(
    V2_3,
    pod_without_pause_container_on_containerd_2_3,
    pod_without_pause_container
);
async fn pod_without_pause_container(dist: Dist) -> Result<()> {
    integration_tests::require_vm!();
    let d = dist.clone();
    let ctd = tokio::task::spawn_blocking(move || Containerd::start_cri_sandbox_api(&d)).await??;
    let mut c = Cri::connect(&ctd.socket, &ctd.dir.join("pod-logs")).await?;
    let pod_cfg = c.pod_config("sbapi");
    let t0 = Instant::now();
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    eprintln!("RunPodSandbox (sandboxer shim): {:?}", t0.elapsed());
    let st = c.pod_status(&pod).await?;
    assert_eq!(st.state, SANDBOX_READY, "{st:?}");
    let ip = st.network.map(|n| n.ip).unwrap_or_default();
    assert!(
        ip.starts_with("10.247."),
        "pod IP from the CNI bridge: {ip:?}"
    );
    let vm = vms::vm_of(&pod).context("no VM for the pod")?;

    let cfg = Cri::container_config(
        "app",
        IMAGE,
        &[
            "sh",
            "-c",
            "echo hello from a shim sandbox; exec sleep 3600",
        ],
    );
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let log = Cri::log_file(&pod_cfg, &cfg);
    Cri::wait_log_line(&log, "hello from a shim sandbox", Duration::from_secs(60)).await?;
    assert_eq!(
        vms::vm_of(&id),
        None,
        "the app container has no VM of its own"
    );
    assert_eq!(vms::vm_of(&pod).map(|v| v.pid), Some(vm.pid));

    // No pause container: containerd's only container in the pod is the app.
    let listed = ctd.ctr_in(cri::NAMESPACE, &["containers", "ls", "-q"])?;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        !listed.contains(&pod),
        "a pause container exists:\n{listed}"
    );
    assert!(listed.contains(&id), "{listed}");

    let out = c.exec_ok(&id, &["sh", "-c", "echo exec works"]).await?;
    assert_eq!(out.trim(), "exec works");
    let stats =
        c.rt.container_stats(api::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no stats")?;
    assert!(stats.memory.is_some(), "{stats:?}");

    c.stop_container(&id, 2).await?;
    let cs = c.wait_exited(&id, Duration::from_secs(30)).await?;
    assert_eq!(cs.state, CONTAINER_EXITED);
    c.remove_container(&id).await?;
    assert_eq!(
        vms::vm_of(&pod).map(|v| v.pid),
        Some(vm.pid),
        "the pod's VM outlives its containers"
    );
    c.rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .with_context(|| ctd.log())?;
    assert_eq!(c.pod_status(&pod).await?.state, SANDBOX_NOTREADY);
    integration_tests::wait_until(Duration::from_secs(15), || vms::vm_of(&pod).is_none())
        .context("the pod's VM did not stop with the pod")?;
    c.rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    let scope = ctd.dir.clone();
    let pods = c.pods.clone();
    let left = tokio::task::spawn_blocking(move || {
        drop(ctd);
        pods.settle_and_check(&scope)
    })
    .await?;
    assert!(left.is_empty(), "left behind: {left:#?}");
    Ok(())
}

on_containerd!(
    V2_3,
    a_dead_vm_ends_the_shim_sandbox_on_containerd_2_3,
    a_dead_vm_ends_the_shim_sandbox
);
/// The VM of a `sandboxer = "shim"` pod is killed: its container's exit is
/// published (`/tasks/exit`, 137) and WaitSandbox returns, which is how
/// CRI learns the pod ended (containerd 2.3.4's CRI publishes no
/// `/sandboxes/*` events of its own: it calls the controller in process)
/// and marks it NOTREADY; the pod is removed cleanly after.
async fn a_dead_vm_ends_the_shim_sandbox(dist: Dist) -> Result<()> {
    integration_tests::require_vm!();
    let d = dist.clone();
    let ctd = tokio::task::spawn_blocking(move || Containerd::start_cri_sandbox_api(&d)).await??;
    let mut c = Cri::connect(&ctd.socket, &ctd.dir.join("pod-logs")).await?;
    let events = ctd.events()?;
    let pod_cfg = c.pod_config("sbdead");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let cfg = Cri::container_config("app", IMAGE, &["sleep", "3600"]);
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let vm = vms::vm_of(&pod).context("no VM for the pod")?;
    // SAFETY: kill(2) on a pid we found; no memory is involved.
    unsafe { libc::kill(i32::try_from(vm.pid)?, libc::SIGKILL) };
    events.wait_for("/tasks/exit", &id, Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.pod_status(&pod).await?.state != SANDBOX_NOTREADY {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pod is not NOTREADY 30 s after its VM died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cs = c.wait_exited(&id, Duration::from_secs(30)).await?;
    assert_eq!(cs.state, CONTAINER_EXITED);
    c.rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .with_context(|| ctd.log())?;
    c.rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    drop(events);
    let scope = ctd.dir.clone();
    let pods = c.pods.clone();
    let left = tokio::task::spawn_blocking(move || {
        drop(ctd);
        pods.settle_and_check(&scope)
    })
    .await?;
    assert!(left.is_empty(), "left behind: {left:#?}");
    Ok(())
}
