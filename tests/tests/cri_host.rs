//! A pod as Kubernetes sizes and accounts it (issue 13): the VM is in the
//! pod's cgroup on the host (cgroupfs and systemd cgroup paths), a pod CPU
//! limit throttles it, and a container's limits are what the guest gives it
//! (vCPUs, memory up to the limit, OOM just above).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use containerd_shim_kata_v2::host_cgroup::{self, Host};
use integration_tests::cri::{assert_no_leftovers, setup_on, vms, Cri};
use integration_tests::{leaks, on_both_containerds, require_vm, Dist, IMAGE};
use k8s_cri::v1 as api;

/// The host's cpu hierarchy (v1 `cpu` or `cpu,cpuacct`, else v2).
fn cpu_hierarchy(host: &Host) -> Result<&host_cgroup::Hierarchy> {
    host.hierarchies
        .iter()
        .find(|h| h.key.split(',').any(|c| c == "cpu"))
        .or_else(|| host.hierarchies.iter().find(|h| h.key.is_empty()))
        .context("no cpu cgroup hierarchy")
}

/// Process `pid`'s cgroup in hierarchy `key`.
fn cgroup_of(pid: u32, key: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    host_cgroup::parse_proc_cgroup(&text)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, p)| p)
        .with_context(|| format!("pid {pid} has no {key:?} cgroup in {text}"))
}

/// QEMU, its helpers (everything naming the pod's run directory) and the
/// pod's shim.
fn pod_processes(pod: &str) -> Result<Vec<(u32, String)>> {
    let vm = vms::vm_of(pod).context("no VM for the pod")?;
    let mut procs = leaks::processes_mentioning(&vm.run_dir.to_string_lossy());
    procs.extend(leaks::processes_mentioning(&format!("-id {pod} ")));
    let names: Vec<&str> = procs.iter().map(|(_, c)| c.as_str()).collect();
    for want in [
        "qemu-system",
        "virtiofsd",
        "vhost-device-vsock",
        "containerd-shim-kata-v2",
    ] {
        if !names.iter().any(|c| c.contains(want)) {
            bail!("no {want} among the pod's processes: {names:#?}");
        }
    }
    Ok(procs)
}

/// Every process of the pod's VM is in `want` (relative to the hierarchy).
fn assert_all_in(pod: &str, key: &str, want: &Path) -> Result<()> {
    for (pid, cmd) in pod_processes(pod)? {
        let got = cgroup_of(pid, key)?;
        assert_eq!(got, Path::new("/").join(want), "{cmd}");
    }
    Ok(())
}

/// A cgroup the test makes as kubelet would (the pod's parent), removed at
/// the end.
struct Parent(Vec<PathBuf>);

impl Drop for Parent {
    fn drop(&mut self) {
        host_cgroup::remove_dirs(&self.0);
    }
}

on_both_containerds!(cgroupfs_pod_vm_is_in_the_pod_cgroup_and_throttled_by_its_limit);
async fn cgroupfs_pod_vm_is_in_the_pod_cgroup_and_throttled_by_its_limit(dist: Dist) -> Result<()> {
    require_vm!();
    let host = Host::discover()?;
    let cpu = cpu_hierarchy(&host)?.clone();
    let (ctd, mut c) = setup_on(&dist).await?;
    let mut pod_cfg = c.pod_config("cgfs");
    let uid = pod_cfg
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    let parent = PathBuf::from(format!("kata-test-pods/pod{uid}"));
    // kubelet creates the pod's cgroup before the sandbox.
    let made = Parent(vec![
        cpu.mount.join("kata-test-pods"),
        cpu.mount.join(&parent),
    ]);
    std::fs::create_dir_all(&made.0[1])?;
    pod_cfg
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = format!("/{}", parent.display());
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let leaf = parent.join(&pod);
    assert_all_in(&pod, &cpu.key, &leaf)?;
    // Every hierarchy, not only cpu.
    let (qemu, _) = pod_processes(&pod)?[0].clone();
    for h in &host.hierarchies {
        assert_eq!(
            cgroup_of(qemu, &h.key)?,
            Path::new("/").join(&leaf),
            "{}",
            h.key
        );
    }

    // The pod's CPU limit (kubelet's, on the pod cgroup) throttles the VM.
    let dir = cpu.mount.join(&parent);
    let v1 = !cpu.key.is_empty();
    if v1 {
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
        std::fs::write(dir.join("cpu.cfs_quota_us"), "20000")?;
    } else {
        std::fs::write(dir.join("cpu.max"), "20000 100000")?;
    }
    let cfg = Cri::container_config("spin", IMAGE, &["sh", "-c", "while :; do :; done"]);
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stat = std::fs::read_to_string(dir.join("cpu.stat"))?;
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no nr_throttled in {stat}"))?;
    assert!(
        throttled > 0,
        "a spinning pod at 0.2 CPU is not throttled:\n{stat}"
    );
    c.stop_container(&id, 0).await?;

    c.remove_pod(&pod).await?;
    // The shim removed the sandbox's cgroup, and only it: the pod's
    // (kubelet's) stays.
    for h in &host.hierarchies {
        assert!(
            !h.mount.join(&leaf).exists(),
            "{} left",
            h.mount.join(&leaf).display()
        );
    }
    assert!(dir.exists(), "the pod's own cgroup was removed");
    drop(made);
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

on_both_containerds!(systemd_cgroup_path_names_a_scope_under_the_slices);
async fn systemd_cgroup_path_names_a_scope_under_the_slices(dist: Dist) -> Result<()> {
    require_vm!();
    let host = Host::discover()?;
    let cpu = cpu_hierarchy(&host)?.clone();
    let (ctd, mut c) = setup_on(&dist).await?;
    let mut pod_cfg = c.pod_config("cgsd");
    let tag: String = pod_cfg
        .metadata
        .as_ref()
        .map(|m| m.uid.chars().filter(char::is_ascii_alphanumeric).collect())
        .unwrap_or_default();
    // containerd's CRI turns a `.slice` parent into `slice:cri-containerd:id`.
    pod_cfg
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = format!("katatest-pod{tag}.slice");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let leaf = PathBuf::from(format!(
        "katatest.slice/katatest-pod{tag}.slice/cri-containerd-{pod}.scope"
    ));
    assert_all_in(&pod, &cpu.key, &leaf)?;
    c.remove_pod(&pod).await?;
    // Nothing of it existed before: the shim removed all of it.
    for h in &host.hierarchies {
        assert!(!h
            .mount
            .join("katatest.slice")
            .join(format!("katatest-pod{tag}.slice"))
            .exists());
    }
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

on_both_containerds!(a_container_gets_its_limits_in_the_guest);
async fn a_container_gets_its_limits_in_the_guest(dist: Dist) -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup_on(&dist).await?;
    let pod_cfg = c.pod_config("limits");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    // 2 CPUs and 512 MiB: more than the VM's default (1 vCPU, 256 MiB).
    let mut cfg = Cri::container_config("big", IMAGE, &["sleep", "3600"]);
    cfg.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 200_000,
            memory_limit_in_bytes: 512 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let nproc = c.exec_ok(&id, &["nproc"]).await?;
    assert_eq!(nproc.trim(), "2", "vCPUs for a 2-CPU limit");
    // Up to the limit: a 400 MiB buffer, every page written.
    let (code, out) = dd(&mut c, &id, 400).await?;
    assert_eq!(code, 0, "400 MiB under a 512 MiB limit: {out}");
    // Just above it: the guest's OOM killer ends the process.
    let (code, out) = dd(&mut c, &id, 560).await?;
    assert_eq!(code, 137, "560 MiB under a 512 MiB limit: {out}");
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

/// Runs `dd` with a `mib` MiB buffer in container `id`: (exit code, output).
async fn dd(c: &mut Cri, id: &str, mib: u32) -> Result<(i32, String)> {
    let bs = format!("bs={mib}M");
    let r = c
        .exec_sync(
            id,
            &["dd", "if=/dev/zero", "of=/dev/null", &bs, "count=1"],
            60,
        )
        .await?;
    Ok((r.exit_code, String::from_utf8_lossy(&r.stderr).into_owned()))
}
