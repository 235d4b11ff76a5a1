//! VM-booting tests. They need a guest kernel + initramfs: set
//! `KATA_GUEST_IMAGE_DIR` to a directory holding `vmlinux` (or `vmlinuz`) and
//! `initrd.img`. Without it every test prints why and passes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_client::testing::which;
use hypervisor::{
    Accel, Error, Hypervisor, MachineType, Qemu, VmConfig, VmOptions, VsockEndpoint, VsockKind,
};

/// The guest image, or skip (a failure under `KATA_REQUIRE_VM=1`).
fn image_dir() -> Option<PathBuf> {
    agent_client::testing::guest_image_dir()
}

fn config(images: &Path, work: &Path, id: &str) -> VmConfig {
    let kernel = ["vmlinux", "vmlinuz"]
        .iter()
        .map(|k| images.join(k))
        .find(|p| p.exists())
        .unwrap_or_else(|| images.join("vmlinux"));
    let shared = work.join("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    VmConfig {
        id: id.into(),
        run_dir: work.join("run"),
        qemu_path: which("qemu-system-x86_64", "/usr/bin/qemu-system-x86_64"),
        kernel,
        initrd: images.join("initrd.img"),
        kernel_params: String::new(),
        machine: MachineType::Q35,
        accel: Accel::Auto,
        vcpus: 1,
        memory_mib: 256,
        vsock: VsockKind::Auto,
        vhost_device_vsock_path: which("vhost-device-vsock", "/usr/local/bin/vhost-device-vsock"),
        shared_dir: shared,
        virtiofsd_path: which("virtiofsd", "/usr/local/bin/virtiofsd"),
        start_timeout: Duration::from_secs(30),
        console_ready: None,
        network: None,
    }
}

fn alive(pid: u32) -> bool {
    hypervisor::process::proc_start_time(pid).is_some()
}

async fn wait_gone(pids: &[u32]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if pids.iter().all(|p| !alive(*p)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn boot_query_and_stop() {
    let Some(images) = image_dir() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let cfg = config(&images, work.path(), "boot1");
    let run_dir = cfg.run_dir.clone();
    let t0 = Instant::now();
    let vm = Qemu::new()
        .launch(cfg, &VmOptions::default())
        .await
        .expect("launch");
    eprintln!("launched in {:?}", t0.elapsed());
    let pids = vm.pids();
    assert!(pids.len() >= 2, "qemu + helpers: {pids:?}");
    assert!(pids.iter().all(|p| alive(*p)));
    assert!(run_dir.join("state.json").exists());
    vm.check().await.expect("QMP query-status running");
    if let VsockEndpoint::Hybrid { uds_path } = vm.vsock() {
        assert!(uds_path.exists(), "hybrid vsock socket {uds_path:?}");
    }
    // Kernel messages (timestamped) show up on the serial console.
    let kernel_printed = |t: String| t.lines().any(|l| l.starts_with("[    "));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kernel_printed(vm.console_tail()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("console after {:?}:\n{}", t0.elapsed(), vm.console_tail());
    assert!(
        kernel_printed(vm.console_tail()),
        "no kernel output on the console"
    );
    vm.pause().await.expect("pause");
    vm.resume().await.expect("resume");

    let t1 = Instant::now();
    vm.stop().await.expect("stop");
    eprintln!("stopped in {:?}", t1.elapsed());
    vm.stop().await.expect("stop is idempotent");
    assert!(wait_gone(&pids).await, "processes left: {pids:?}");
    assert!(!run_dir.exists(), "run dir left");
}

#[tokio::test]
async fn qemu_killed_is_detected() {
    let Some(images) = image_dir() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let cfg = config(&images, work.path(), "kill1");
    let run_dir = cfg.run_dir.clone();
    let vm = Qemu::new()
        .launch(cfg, &VmOptions::default())
        .await
        .expect("launch");
    let pids = vm.pids();
    let qemu = i32::try_from(pids[0]).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 qemu");
    tokio::time::timeout(Duration::from_secs(1), vm.wait_exit())
        .await
        .expect("wait_exit within 1 s of kill -9");
    let reason = vm.exit_reason().unwrap_or_default();
    assert!(
        reason.contains("qemu") && reason.contains("signal: 9"),
        "{reason}"
    );
    assert!(vm.check().await.is_err());
    vm.stop().await.expect("stop after crash");
    assert!(wait_gone(&pids).await, "processes left: {pids:?}");
    assert!(!run_dir.exists(), "run dir left");
}

#[tokio::test]
async fn cleanup_run_dir_after_owner_lost() {
    let Some(images) = image_dir() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let cfg = config(&images, work.path(), "orphan1");
    let run_dir = cfg.run_dir.clone();
    let vm = Qemu::new()
        .launch(cfg, &VmOptions::default())
        .await
        .expect("launch");
    let pids = vm.pids();
    // As the shim's `delete` after a daemon crash: only the run dir is known.
    hypervisor::cleanup_run_dir(&run_dir)
        .await
        .expect("cleanup");
    assert!(wait_gone(&pids).await, "processes left: {pids:?}");
    assert!(!run_dir.exists());
    tokio::time::timeout(Duration::from_secs(1), vm.wait_exit())
        .await
        .expect("exit seen");
    vm.stop().await.expect("stop after cleanup");
}

#[tokio::test]
async fn bad_input_spawns_nothing() {
    // Runs without an image too: validation happens before anything starts.
    let work = tempfile::tempdir().expect("tempdir");
    let images = std::env::var_os("KATA_GUEST_IMAGE_DIR")
        .map_or_else(|| work.path().to_path_buf(), PathBuf::from);
    let base = config(&images, work.path(), "bad1");
    type Mutation = fn(&mut VmConfig);
    let cases: [(&str, Mutation); 3] = [
        ("kernel", |c| {
            c.kernel = PathBuf::from("/nonexistent/vmlinux")
        }),
        ("memory_mib", |c| c.memory_mib = 64),
        ("vcpus", |c| c.vcpus = 1000),
    ];
    for (field, mutate) in cases {
        let mut c = base.clone();
        mutate(&mut c);
        match Qemu::new().launch(c.clone(), &VmOptions::default()).await {
            Err(Error::InvalidConfig(m)) => {
                // Without an image the kernel check may fire first; with one it must name the field.
                if std::env::var_os("KATA_GUEST_IMAGE_DIR").is_some() {
                    assert!(m.contains(field), "{field}: {m}");
                }
            }
            Err(e) => panic!("{field}: expected InvalidConfig, got {e}"),
            Ok(vm) => {
                let _ = vm.stop().await;
                panic!("{field}: launched");
            }
        }
        assert!(!c.run_dir.exists(), "{field}: run dir created");
    }
}

/// kill -9 of either helper (virtiofsd, vhost-device-vsock) is reported within
/// 1 s, names the helper, and stop leaves nothing behind.
#[tokio::test]
async fn helper_killed_is_detected() {
    let Some(images) = image_dir() else { return };
    // pids(): QEMU, then virtiofsd, then vhost-device-vsock (hybrid vsock here).
    for (index, name) in [(1, "virtiofsd"), (2, "vhost-device-vsock")] {
        let work = tempfile::tempdir().expect("tempdir");
        let cfg = config(&images, work.path(), &format!("hk{index}"));
        let run_dir = cfg.run_dir.clone();
        let vm = Qemu::new()
            .launch(cfg, &VmOptions::default())
            .await
            .expect("launch");
        let pids = vm.pids();
        let Some(&helper) = pids.get(index) else {
            eprintln!("no {name} here (kernel vhost-vsock?): {pids:?}");
            vm.stop().await.expect("stop");
            continue;
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(helper).expect("pid")),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9 helper");
        tokio::time::timeout(Duration::from_secs(1), vm.wait_exit())
            .await
            .unwrap_or_else(|_| panic!("{name} death not seen within 1 s"));
        let reason = vm.exit_reason().unwrap_or_default();
        assert!(reason.contains(name), "{name}: {reason}");
        vm.stop().await.expect("stop after helper death");
        assert!(wait_gone(&pids).await, "processes left: {pids:?}");
        assert!(!run_dir.exists(), "run dir left");
    }
}
