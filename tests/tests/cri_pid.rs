//! Processes and PID namespaces through CRI, as runc has them: a pod whose
//! container's init dies while its workers live on stops promptly, with and
//! without `shareProcessNamespace`, and a shared PID namespace is the pod's
//! (PID 1 = the pause), never the VM's where the agent lives.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration_tests::cri::Cri;
use integration_tests::cri::{assert_no_leftovers, setup};
use integration_tests::{require_vm, IMAGE};
use k8s_cri::v1 as api;

/// CRI's NamespaceMode: POD shares with the pod (shareProcessNamespace),
/// CONTAINER gives the container its own.
const POD: i32 = api::NamespaceMode::Pod as i32;
const CONTAINER: i32 = api::NamespaceMode::Container as i32;

fn with_pid_mode(pod: &mut api::PodSandboxConfig, mode: i32) {
    let linux = pod.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options
        .get_or_insert_with(Default::default)
        .pid = mode;
}

fn container_with_pid_mode(name: &str, cmd: &[&str], mode: i32) -> api::ContainerConfig {
    let mut cfg = Cri::container_config(name, IMAGE, cmd);
    let linux = cfg.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.namespace_options
        .get_or_insert_with(Default::default)
        .pid = mode;
    cfg
}

/// An nginx-like server: the init (master) ignores SIGTERM and logs to
/// stdout every 200 ms; a worker subtree (httpd, and a shell relaying its
/// log) inherits stdout and outlives the master unless something kills it.
const SERVER: &str = "mkdir -p /tmp/www && echo served > /tmp/www/index.html && \
     (httpd -f -vv -p 8080 -h /tmp/www 2>&1 | while read l; do echo \"worker: $l\"; done) & \
     trap '' TERM; while :; do echo master alive; sleep 0.2; done";

/// Fetches the server's page from inside the pod (busybox's static wget
/// crashes in Debian's build; nc speaks HTTP/1.0 fine).
async fn get_page(c: &mut Cri, id: &str) -> Result<String> {
    let get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 127.0.0.1 8080";
    let mut last = String::new();
    for _ in 0..30 {
        let r = c.exec_sync(id, &["sh", "-c", get], 30).await?;
        last = String::from_utf8_lossy(&r.stdout).into_owned();
        if last.contains("served") {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("no page from the server: {last:?}")
}

/// Runs the server pod with PID mode `mode`, serves a request, then stops
/// it as the kubelet does (StopContainer with a grace period, then
/// StopPodSandbox): each must return within the grace period plus slack.
async fn server_pod_stops_promptly(mode: i32, name: &str) -> Result<()> {
    let (ctd, mut c) = setup().await?;
    let mut pod_cfg = c.pod_config(name);
    with_pid_mode(&mut pod_cfg, mode);
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let cfg = container_with_pid_mode("server", &["sh", "-c", SERVER], mode);
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let log = Cri::log_file(&pod_cfg, &cfg);
    Cri::wait_log_line(&log, "master alive", Duration::from_secs(60)).await?;
    let page = get_page(&mut c, &id).await?;
    assert!(page.contains("200 OK"), "{page}");
    // The worker logged the request to the container's stdout.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)?.contains("worker: ") {
        if Instant::now() > deadline {
            bail!(
                "no worker line in the log:\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let grace = 3;
    let slack = Duration::from_secs(15);
    let t0 = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(grace as u64) + slack,
        c.stop_container(&id, grace),
    )
    .await
    .with_context(|| format!("StopContainer hung ({name})\n{}", ctd.log()))??;
    let stop = t0.elapsed();
    let st = c.container_status(&id).await?;
    assert_eq!(st.state, integration_tests::cri::client::CONTAINER_EXITED);
    assert_eq!(st.exit_code, 137, "SIGKILL after the grace period: {st:?}");
    let t1 = Instant::now();
    tokio::time::timeout(
        slack,
        c.rt.stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        }),
    )
    .await
    .with_context(|| format!("StopPodSandbox hung ({name})\n{}", ctd.log()))??;
    eprintln!(
        "{name}: StopContainer {stop:?}, StopPodSandbox {:?}",
        t1.elapsed()
    );
    c.rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_worker_pod_stops_within_the_grace_period_with_shared_pids() -> Result<()> {
    require_vm!();
    server_pod_stops_promptly(POD, "mw-shared").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_worker_pod_stops_within_the_grace_period_with_own_pids() -> Result<()> {
    require_vm!();
    server_pod_stops_promptly(CONTAINER, "mw-own").await
}

/// Every process's command line as the container sees /proc, one per line.
async fn proc_cmdlines(c: &mut Cri, id: &str) -> Result<Vec<(u32, String)>> {
    let script = "for p in /proc/[0-9]*; do \
                  printf '%s ' \"${p#/proc/}\"; tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done";
    let out = c.exec_ok(id, &["sh", "-c", script]).await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (pid, cmd) = l.split_once(' ')?;
            Some((pid.parse().ok()?, cmd.trim().to_owned()))
        })
        .collect())
}

/// shareProcessNamespace: the pod's containers see each other and the
/// pause as PID 1, and nothing of the VM's (the agent is /init there, its
/// container helpers `__kata-container-init`). With their own namespaces
/// they see only themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pid_namespace_is_the_pods_not_the_vms() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let mut pod_cfg = c.pod_config("pidns");
    with_pid_mode(&mut pod_cfg, POD);
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let a_cfg = container_with_pid_mode("a", &["sleep", "4321"], POD);
    let a = c.run_container(&pod, &a_cfg, &pod_cfg).await?;
    let b_cfg = container_with_pid_mode("b", &["sleep", "3600"], POD);
    let b = c.run_container(&pod, &b_cfg, &pod_cfg).await?;
    let own_cfg = container_with_pid_mode("own", &["sleep", "3601"], CONTAINER);
    let own = c.run_container(&pod, &own_cfg, &pod_cfg).await?;

    let seen = proc_cmdlines(&mut c, &b).await?;
    let shown = format!("{seen:#?}");
    let pid1 = seen.iter().find(|(p, _)| *p == 1).map(|(_, c)| c.as_str());
    assert_eq!(pid1, Some("/pause"), "PID 1 is the pod's pause: {shown}");
    assert!(
        seen.iter().any(|(_, c)| c == "sleep 4321"),
        "b sees a's process: {shown}"
    );
    for (_, cmd) in &seen {
        assert!(
            !cmd.starts_with("/init") && !cmd.contains("__kata") && !cmd.contains("kata-agent"),
            "the agent or its helpers are visible in the pod: {shown}"
        );
    }
    // Signals reach what the container sees: b can end a's init.
    // (The marker is split in the script so the shell does not match itself.)
    let kill_a = "for p in /proc/[0-9]*; do \
                  [ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = \"sleep 43\"\"21 \" ] && \
                  kill -9 ${p#/proc/}; done; true";
    c.exec_ok(&b, &["sh", "-c", kill_a]).await?;
    let st = c.wait_exited(&a, Duration::from_secs(30)).await?;
    assert_eq!(st.exit_code, 137, "{st:?}");

    let seen = proc_cmdlines(&mut c, &own).await?;
    let shown = format!("{seen:#?}");
    let pid1 = seen.iter().find(|(p, _)| *p == 1).map(|(_, c)| c.as_str());
    assert_eq!(pid1, Some("sleep 3601"), "its own namespace: {shown}");
    assert!(
        !seen.iter().any(|(_, c)| c == "/pause" || c == "sleep 3600"),
        "a container with its own namespace sees none of the pod's: {shown}"
    );
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}
