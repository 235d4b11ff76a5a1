//! Kubernetes CRI through containerd's CRI plugin with runtime handler
//! `kata`: real containerd, the real shim, one QEMU VM per pod.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::cri::client::{
    CONTAINER_EXITED, CONTAINER_RUNNING, SANDBOX_NOTREADY, SANDBOX_READY,
};
use integration_tests::cri::{self, vms, Cri};
use integration_tests::cri::{assert_no_leftovers, pod_with_sleeper, setup, setup_on};
use integration_tests::{on_both_containerds, require_vm, text, Dist, IMAGE};
use k8s_cri::v1 as api;

/// The QEMU pid of `pod`'s VM.
fn vm_pid(pod: &str) -> Option<u32> {
    vms::vm_of(pod).map(|v| v.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_status_report_runtime_and_network_ready() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let v =
        c.rt.version(api::VersionRequest::default())
            .await
            .with_context(|| ctd.log())?
            .into_inner();
    assert_eq!(v.runtime_name, "containerd");
    assert_eq!(v.runtime_api_version, "v1");
    let st =
        c.rt.status(api::StatusRequest { verbose: false })
            .await?
            .into_inner();
    let conds = st.status.context("no status")?.conditions;
    for want in ["RuntimeReady", "NetworkReady"] {
        let cond = conds
            .iter()
            .find(|x| x.r#type == want)
            .with_context(|| format!("no {want} in {conds:?}"))?;
        assert!(cond.status, "{want} false: {cond:?}");
    }
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

on_both_containerds!(pod_lifecycle_runs_a_container_in_one_vm);
async fn pod_lifecycle_runs_a_container_in_one_vm(dist: Dist) -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup_on(&dist).await?;
    let pod_cfg = c.pod_config("lifecycle");
    let t0 = Instant::now();
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let st = c.pod_status(&pod).await?;
    assert_eq!(st.state, SANDBOX_READY);
    let ip = st.network.map(|n| n.ip).unwrap_or_default();
    assert!(
        ip.starts_with("10.247."),
        "pod IP from the CNI bridge: {ip:?}"
    );
    let vm = vm_pid(&pod).context("no VM for the pod")?;

    let cfg = Cri::container_config(
        "hello",
        IMAGE,
        &[
            "sh",
            "-c",
            "echo hello from a pod; cat /etc/kata-test-marker; uname -r",
        ],
    );
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let log = Cri::log_file(&pod_cfg, &cfg);
    Cri::wait_log_line(&log, "hello from a pod", Duration::from_secs(60)).await?;
    eprintln!("RunPodSandbox to first output: {:?}", t0.elapsed());
    let cs = c.wait_exited(&id, Duration::from_secs(30)).await?;
    assert_eq!(cs.exit_code, 0, "{cs:?}");
    assert_eq!(cs.reason, "Completed");
    assert!(
        cs.started_at > 0 && cs.finished_at >= cs.started_at,
        "{cs:?}"
    );
    let entries = cri::logs::parse(&std::fs::read_to_string(&log)?).map_err(anyhow::Error::msg)?;
    let lines = cri::logs::lines(&entries, "stdout");
    let guest = std::fs::read_to_string(integration_tests::guest_dir().join("kernel-release"))?;
    assert_eq!(
        lines,
        vec![
            "hello from a pod".to_owned(),
            "kata-busybox image marker".to_owned(),
            guest.trim().to_owned()
        ]
    );
    assert_eq!(vm_pid(&id), None, "no VM of its own for the app container");
    c.remove_container(&id).await?;
    // The VM lives as long as the pod, whatever its containers do.
    assert_eq!(
        vm_pid(&pod),
        Some(vm),
        "the pod's VM outlives its containers"
    );

    c.rt.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    assert_eq!(c.pod_status(&pod).await?.state, SANDBOX_NOTREADY);
    c.rt.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    assert!(
        c.pod_status(&pod).await.is_err(),
        "removed pod has no status"
    );
    integration_tests::wait_until(Duration::from_secs(15), || vm_pid(&pod).is_none())
        .context("the pod's VM did not go away")?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

/// Pod networking: each pod's VM owns the pod IP CNI gave its netns (tap +
/// tc redirect to a virtio-net NIC), and pods reach each other over CNI's
/// bridge: a client pod fetches a page from a server pod's IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_each_other_over_the_pod_network() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let server_cfg = c.pod_config("netserver");
    let server = c.run_pod(&server_cfg).await.with_context(|| ctd.log())?;
    let cfg = Cri::container_config(
        "httpd",
        IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo served-by-pod-a > /tmp/www/index.html && \
             exec httpd -f -p 8080 -h /tmp/www",
        ],
    );
    c.run_container(&server, &cfg, &server_cfg).await?;
    let server_ip = c
        .pod_status(&server)
        .await?
        .network
        .map(|n| n.ip)
        .unwrap_or_default();

    let (_, client, sleeper) = pod_with_sleeper(&mut c, "netclient").await?;
    let client_ip = c
        .pod_status(&client)
        .await?
        .network
        .map(|n| n.ip)
        .unwrap_or_default();
    assert_ne!(server_ip, client_ip);
    let addr = c
        .exec_ok(&sleeper, &["ip", "-o", "-4", "addr", "show"])
        .await?;
    assert!(
        addr.contains(&format!("eth0    inet {client_ip}/16"))
            || addr.contains(&format!("inet {client_ip}/16")),
        "the guest NIC has the pod IP {client_ip}:\n{addr}"
    );
    let routes = c.exec_ok(&sleeper, &["ip", "route"]).await?;
    assert!(
        routes.contains("10.247.0.0/16 dev eth0"),
        "the pod subnet route:\n{routes}"
    );
    // busybox's static wget crashes (Debian's build); nc speaks HTTP/1.0 fine.
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {server_ip} 8080");
    let mut last = String::new();
    for _ in 0..20 {
        let r = c.exec_sync(&sleeper, &["sh", "-c", &get], 30).await?;
        last = format!(
            "exit {}: {}{}",
            r.exit_code,
            text(&r.stdout),
            text(&r.stderr)
        );
        if r.exit_code == 0 && !r.stdout.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        last.starts_with("exit 0: HTTP/1.") && last.ends_with("\r\n\r\nserved-by-pod-a\n"),
        "GET / from {server_ip}:8080 in the client pod: {last:?}"
    );
    c.remove_pod(&client).await?;
    c.remove_pod(&server).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

on_both_containerds!(stop_container_sends_sigterm_then_sigkill_after_the_grace_period);
async fn stop_container_sends_sigterm_then_sigkill_after_the_grace_period(
    dist: Dist,
) -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup_on(&dist).await?;
    let pod_cfg = c.pod_config("stop");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;

    // Handles SIGTERM: exits with its own code, well before the grace period ends.
    let polite = Cri::container_config(
        "polite",
        IMAGE,
        &[
            "sh",
            "-c",
            "trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 1; done",
        ],
    );
    let id = c.run_container(&pod, &polite, &pod_cfg).await?;
    let log = Cri::log_file(&pod_cfg, &polite);
    Cri::wait_log_line(&log, "ready", Duration::from_secs(30)).await?;
    assert_eq!(c.container_status(&id).await?.state, CONTAINER_RUNNING);
    let t = Instant::now();
    c.stop_container(&id, 30).await?;
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    let st = c.container_status(&id).await?;
    assert_eq!((st.state, st.exit_code), (CONTAINER_EXITED, 3), "{st:?}");
    Cri::wait_log_line(&log, "got TERM", Duration::from_secs(5)).await?;

    // Ignores SIGTERM: killed once the 2 s grace period is over.
    let stubborn = Cri::container_config(
        "stubborn",
        IMAGE,
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while true; do sleep 1; done",
        ],
    );
    let id2 = c.run_container(&pod, &stubborn, &pod_cfg).await?;
    Cri::wait_log_line(
        &Cri::log_file(&pod_cfg, &stubborn),
        "ready",
        Duration::from_secs(30),
    )
    .await?;
    let t = Instant::now();
    c.stop_container(&id2, 2).await?;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "SIGKILL before the grace period: {took:?}"
    );
    let st = c.container_status(&id2).await?;
    assert_eq!((st.state, st.exit_code), (CONTAINER_EXITED, 137), "{st:?}");
    c.remove_container(&id).await?;
    c.remove_container(&id2).await?;
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

on_both_containerds!(exec_sync_reports_exit_code_and_output_and_kills_on_timeout);
async fn exec_sync_reports_exit_code_and_output_and_kills_on_timeout(dist: Dist) -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup_on(&dist).await?;
    let (_, pod, id) = pod_with_sleeper(&mut c, "execsync")
        .await
        .with_context(|| ctd.log())?;
    let r = c
        .exec_sync(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"], 30)
        .await?;
    assert_eq!(r.exit_code, 3);
    assert_eq!(text(&r.stdout), "out\n");
    assert_eq!(text(&r.stderr), "err\n");

    let t = Instant::now();
    let r = c.exec_sync(&id, &["sleep", "99"], 2).await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "timeout not applied: {took:?}"
    );
    match &r {
        Ok(resp) => assert_ne!(resp.exit_code, 0, "timed-out exec succeeded: {resp:?}"),
        Err(status) => assert!(
            status.message().contains("timeout"),
            "unclear timeout error: {status:?}"
        ),
    }
    // The timed-out process was killed.
    let ps = c.exec_ok(&id, &["ps", "-o", "args"]).await?;
    assert!(!ps.contains("sleep 99"), "exec survived its timeout:\n{ps}");
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

on_both_containerds!(container_log_is_in_cri_format_and_can_be_reopened);
async fn container_log_is_in_cri_format_and_can_be_reopened(dist: Dist) -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup_on(&dist).await?;
    let pod_cfg = c.pod_config("logs");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let cfg = Cri::container_config(
        "ticker",
        IMAGE,
        &[
            "sh",
            "-c",
            "echo to-stderr >&2; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done",
        ],
    );
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let log = Cri::log_file(&pod_cfg, &cfg);
    Cri::wait_log_line(&log, "line 2", Duration::from_secs(30)).await?;
    let entries = cri::logs::parse(&std::fs::read_to_string(&log)?).map_err(anyhow::Error::msg)?;
    assert_eq!(
        cri::logs::lines(&entries, "stderr"),
        vec!["to-stderr".to_owned()]
    );
    assert!(cri::logs::lines(&entries, "stdout").starts_with(&[
        "line 0".to_owned(),
        "line 1".to_owned(),
        "line 2".to_owned()
    ]));

    // Log rotation as the kubelet does it: rename, then ReopenContainerLog.
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated)?;
    c.rt.reopen_container_log(api::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await?;
    integration_tests::wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
    })
    .context("nothing written to the reopened log")?;
    let fresh = cri::logs::parse(&std::fs::read_to_string(&log)?).map_err(anyhow::Error::msg)?;
    let n: Vec<u32> = cri::logs::lines(&fresh, "stdout")
        .iter()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect();
    assert!(n.first().is_some_and(|&first| first > 2), "{n:?}");
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

on_both_containerds!(container_stats_have_cpu_and_memory);
async fn container_stats_have_cpu_and_memory(dist: Dist) -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup_on(&dist).await?;
    let pod_cfg = c.pod_config("stats");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let cfg = Cri::container_config(
        "busy",
        IMAGE,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 3600",
        ],
    );
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let s =
            c.rt.container_stats(api::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await?
            .into_inner()
            .stats
            .context("no stats")?;
        let cpu = s
            .cpu
            .as_ref()
            .and_then(|x| x.usage_core_nano_seconds.as_ref());
        if cpu.is_some_and(|v| v.value > 0) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let cpu = stats.cpu.as_ref().context("no cpu stats")?;
    let mem = stats.memory.as_ref().context("no memory stats")?;
    assert!(cpu.timestamp > 0 && mem.timestamp > 0, "{stats:?}");
    assert!(
        cpu.usage_core_nano_seconds
            .as_ref()
            .is_some_and(|v| v.value > 0),
        "{stats:?}"
    );
    assert!(
        mem.working_set_bytes.as_ref().is_some_and(|v| v.value > 0),
        "{stats:?}"
    );
    assert_eq!(
        stats.attributes.as_ref().map(|a| a.id.as_str()),
        Some(id.as_str())
    );

    let list =
        c.rt.list_container_stats(api::ListContainerStatsRequest {
            filter: Some(api::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0]
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .is_some_and(|v| v.value > 0));
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

/// The container's own cgroup directory as the container sees it.
const CGROUP_DIR: &str = "/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_container_resources_reaches_the_guest_cgroup() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let (_, pod, id) = pod_with_sleeper(&mut c, "update")
        .await
        .with_context(|| ctd.log())?;
    c.rt.update_container_resources(api::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .with_context(|| ctd.log())?;
    let script = format!("cat {CGROUP_DIR}/memory.max {CGROUP_DIR}/cpu.max");
    let out = c.exec_ok(&id, &["sh", "-c", &script]).await?;
    assert_eq!(out, format!("{}\n50000 100000\n", 96 << 20));
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_its_vm_and_a_new_one_can_follow() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let (pod_cfg, pod, sleeper) = pod_with_sleeper(&mut c, "several")
        .await
        .with_context(|| ctd.log())?;
    let vm = vm_pid(&pod).context("no VM for the pod")?;

    let first = Cri::container_config("first", IMAGE, &["sh", "-c", "echo first; exit 4"]);
    let id1 = c.run_container(&pod, &first, &pod_cfg).await?;
    let st = c.wait_exited(&id1, Duration::from_secs(30)).await?;
    assert_eq!(st.exit_code, 4);
    c.remove_container(&id1).await?;

    // A new container after the previous one exited and was removed.
    let second = Cri::container_config("second", IMAGE, &["sh", "-c", "echo second; sleep 3600"]);
    let id2 = c.run_container(&pod, &second, &pod_cfg).await?;
    Cri::wait_log_line(
        &Cri::log_file(&pod_cfg, &second),
        "second",
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(vm_pid(&pod), Some(vm), "still the pod's one VM");
    for id in [&sleeper, &id1, &id2] {
        assert_eq!(vm_pid(id), None, "container {id} got a VM of its own");
    }

    // Both running containers run on one kernel (the same boot), not the host's.
    let boot_id = ["cat", "/proc/sys/kernel/random/boot_id"];
    let a = c.exec_ok(&sleeper, &boot_id).await?;
    let b = c.exec_ok(&id2, &boot_id).await?;
    assert_eq!(a, b, "containers of one pod share its VM");
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    assert_ne!(a, host);
    let listed =
        c.rt.list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2, "{listed:?}");
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_reported_as_oomkilled() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let pod_cfg = c.pod_config("oom");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let mut cfg = Cri::container_config("hog", IMAGE, &["tail", "/dev/zero"]);
    cfg.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let st = c.wait_exited(&id, Duration::from_secs(60)).await?;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_hostname_and_dns_options_are_visible_in_the_container() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let mut pod_cfg = c.pod_config("dns");
    pod_cfg.hostname = "kata-cri-host".to_owned();
    pod_cfg.dns_config = Some(api::DnsConfig {
        servers: vec!["127.0.0.53".to_owned()],
        searches: vec!["kata.test".to_owned()],
        options: vec!["ndots:2".to_owned()],
    });
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let cfg = Cri::container_config("dns", IMAGE, &["sleep", "3600"]);
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let resolv = c.exec_ok(&id, &["cat", "/etc/resolv.conf"]).await?;
    for want in [
        "nameserver 127.0.0.53",
        "search kata.test",
        "options ndots:2",
    ] {
        assert!(
            resolv.lines().any(|l| l.trim() == want),
            "{want:?} not in:\n{resolv}"
        );
    }
    let etc_hostname = c.exec_ok(&id, &["cat", "/etc/hostname"]).await?;
    assert_eq!(etc_hostname.trim(), "kata-cri-host");
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

/// The kernel's hostname (uname -n) of an app container is the pod's: CRI
/// gives app containers the sandbox's UTS namespace by path
/// (`/proc/<pause pid>/ns/uts`), which means nothing in the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_container_uts_hostname_is_the_pods() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let mut pod_cfg = c.pod_config("uts");
    pod_cfg.hostname = "kata-cri-host".to_owned();
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let cfg = Cri::container_config("uts", IMAGE, &["sleep", "3600"]);
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let name = c.exec_ok(&id, &["hostname"]).await;
    c.remove_pod(&pod).await?;
    assert_eq!(name?.trim(), "kata-cri-host");
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

/// RunPodSandbox to the first line of the first container's log, five pods
/// one after another; prints the median (the issue's closing number).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_to_first_output_median_of_five() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let mut times = Vec::new();
    for i in 0..5 {
        let pod_cfg = c.pod_config(&format!("timing{i}"));
        let cfg = Cri::container_config("first", IMAGE, &["echo", "first output"]);
        let t = Instant::now();
        let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
        c.run_container(&pod, &cfg, &pod_cfg).await?;
        Cri::wait_log_line(
            &Cri::log_file(&pod_cfg, &cfg),
            "first output",
            Duration::from_secs(60),
        )
        .await?;
        times.push(t.elapsed());
        c.remove_pod(&pod).await?;
    }
    times.sort();
    eprintln!(
        "RunPodSandbox -> first container output: median {:?} (all: {times:?})",
        times[2]
    );
    assert!(times[2] < Duration::from_secs(30), "{times:?}");
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_other_pods_keep_running() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let (_, bystander_pod, bystander) = pod_with_sleeper(&mut c, "bystander")
        .await
        .with_context(|| ctd.log())?;

    let err = c
        .run_pod_with(&c.pod_config("nohandler"), "no-such-handler")
        .await
        .expect_err("unknown runtime handler must fail");
    assert!(err.message().contains("no-such-handler"), "{err:?}");

    let (pod_cfg, pod, id) = pod_with_sleeper(&mut c, "victim").await?;
    let missing = Cri::container_config("missing", "docker.io/library/no-such-image:1", &["true"]);
    let err = c
        .create_container_raw(&pod, &missing, &pod_cfg)
        .await
        .expect_err("a missing image must fail");
    assert!(err.message().contains("no-such-image"), "{err:?}");

    c.stop_container(&id, 0).await?;
    let err = c
        .exec_sync(&id, &["true"], 10)
        .await
        .expect_err("ExecSync in a stopped container must fail");
    assert!(
        err.message().contains("not running") || err.message().contains("state"),
        "{err:?}"
    );

    // The other pod did not notice.
    assert_eq!(c.exec_ok(&bystander, &["echo", "alive"]).await?, "alive\n");
    assert_eq!(c.pod_status(&bystander_pod).await?.state, SANDBOX_READY);
    c.remove_pod(&pod).await?;
    c.remove_pod(&bystander_pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_image_from_the_local_registry_and_run_it() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let dir = ctd.dir.join("registry");
    let tar = ctd.dir.join("busybox.tar");
    let reference = tokio::task::spawn_blocking(move || -> Result<_> {
        let reg = cri::registry::Registry::start(&dir)?;
        let r = reg.push(&tar, "kata-test/busybox:pulled")?;
        Ok((reg, r))
    })
    .await??;
    let (registry, image) = reference;
    let pulled = c
        .img
        .pull_image(api::PullImageRequest {
            image: Some(api::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .with_context(|| ctd.log())?
        .into_inner();
    assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");
    let status = c
        .img
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?
        .into_inner();
    assert!(status.image.is_some_and(|i| i.repo_tags.contains(&image)));

    let pod_cfg = c.pod_config("pulled");
    let pod = c.run_pod(&pod_cfg).await?;
    let cfg = Cri::container_config("pulled", &image, &["cat", "/etc/kata-test-marker"]);
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    Cri::wait_log_line(
        &Cri::log_file(&pod_cfg, &cfg),
        "kata-busybox image marker",
        Duration::from_secs(30),
    )
    .await?;
    c.wait_exited(&id, Duration::from_secs(30)).await?;
    c.remove_pod(&pod).await?;
    drop(registry);
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}
