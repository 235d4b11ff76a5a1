//! containerd restarts (an upgrade, a crash) while pods run: the pods and
//! their VMs keep running, containerd reconnects to each shim through its
//! bundle's address file, and logs, exec, exit events and removal work
//! afterwards. On containerd 1.6 and 2.3.

use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::cri::client::{CONTAINER_EXITED, CONTAINER_RUNNING};
use integration_tests::cri::{vms, Cri};
use integration_tests::{on_both_containerds, Containerd, Dist, IMAGE};

fn log_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter(|l| l.contains(" tick ")).count())
        .unwrap_or(0)
}

on_both_containerds!(pods_survive_a_containerd_restart);
async fn pods_survive_a_containerd_restart(dist: Dist) -> Result<()> {
    integration_tests::require_vm!();
    let d = dist.clone();
    let ctd = tokio::task::spawn_blocking(move || Containerd::start_cri_on(&d)).await??;
    let logs = ctd.dir.join("pod-logs");
    let mut c = Cri::connect(&ctd.socket, &logs).await?;
    let pod_cfg = c.pod_config("restart");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let vm = vms::vm_of(&pod).context("no VM for the pod")?;
    let cfg = Cri::container_config(
        "ticker",
        IMAGE,
        &[
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done",
        ],
    );
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let log = Cri::log_file(&pod_cfg, &cfg);
    Cri::wait_log_line(&log, "tick 2", Duration::from_secs(60)).await?;
    let old_pid = ctd.pid();

    drop(c);
    let mut ctd = ctd;
    let ctd = tokio::task::spawn_blocking(move || -> Result<Containerd> {
        ctd.restart()?;
        Ok(ctd)
    })
    .await??;
    assert_ne!(ctd.pid(), old_pid, "a new containerd");
    let mut c = Cri::connect(&ctd.socket, &logs).await?;
    c.pods.record(&pod);

    assert_eq!(
        vms::vm_of(&pod).map(|v| v.pid),
        Some(vm.pid),
        "the pod's VM survived the restart"
    );
    let st = c.container_status(&id).await.with_context(|| ctd.log())?;
    assert_eq!(st.state, CONTAINER_RUNNING, "{st:?}");
    // Logs continue: containerd reopened the container's fifos.
    let before = log_lines(&log);
    integration_tests::wait_until(Duration::from_secs(20), || log_lines(&log) >= before + 3)
        .with_context(|| format!("no new log lines after the restart ({before})"))?;
    // Requests reach the shim through the reconnected client.
    let out = c.exec_ok(&id, &["echo", "after restart"]).await?;
    assert_eq!(out.trim(), "after restart");
    // Exit events reach the new containerd.
    c.stop_container(&id, 2).await?;
    let cs = c.wait_exited(&id, Duration::from_secs(30)).await?;
    assert_eq!(cs.state, CONTAINER_EXITED);
    c.remove_container(&id).await?;
    c.remove_pod(&pod).await?;
    integration_tests::wait_until(Duration::from_secs(15), || vms::vm_of(&pod).is_none())
        .context("the pod's VM did not go away")?;
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
