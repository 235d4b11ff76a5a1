//! The client against the real guest agent in a QEMU VM launched through the
//! hypervisor crate: boot → connect (hybrid vsock) → sandbox → container with
//! output and exit status → stop. Needs the guest image:
//! `KATA_GUEST_IMAGE_DIR=build/guest cargo test -p agent-client --test vm`;
//! without it the test prints why and passes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_client::testing::{self, which};
use agent_client::{connect, Address, Agent};
use hypervisor::{
    Accel, Hypervisor, MachineType, Qemu, VmConfig, VmOptions, VsockEndpoint, VsockKind,
};
use protocols::agent::{CreateContainerRequest, CreateSandboxRequest};
use protocols::ttrpc::Code;

fn vm_config(images: &Path, work: &Path) -> VmConfig {
    let shared = work.join("shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    VmConfig {
        id: "agentvm".into(),
        run_dir: work.join("run"),
        qemu_path: which("qemu-system-x86_64", "/usr/bin/qemu-system-x86_64"),
        kernel: images.join("vmlinux"),
        initrd: images.join("initrd.img"),
        // KATA_TEST_KERNEL_PARAMS replaces the extra parameters (boot-time experiments).
        kernel_params: std::env::var("KATA_TEST_KERNEL_PARAMS").unwrap_or_else(|_| "quiet".into()),
        // KATA_TEST_MACHINE=microvm tries the other board.
        machine: match std::env::var("KATA_TEST_MACHINE").as_deref() {
            Ok("microvm") => MachineType::Microvm,
            _ => MachineType::Q35,
        },
        accel: Accel::Auto,
        vcpus: 1,
        memory_mib: 512,
        vsock: VsockKind::Auto,
        vhost_device_vsock_path: which("vhost-device-vsock", "/usr/local/bin/vhost-device-vsock"),
        shared_dir: shared,
        virtiofsd_path: which("virtiofsd", "/usr/local/bin/virtiofsd"),
        start_timeout: Duration::from_secs(30),
        console_ready: None,
        network: None,
    }
}

async fn drain(agent: &dyn Agent, cid: &str, stderr: bool) -> String {
    let mut out = Vec::new();
    loop {
        let chunk = if stderr {
            agent.read_stderr(cid, "", 4096).await
        } else {
            agent.read_stdout(cid, "", 4096).await
        };
        match chunk.expect("read never errors") {
            Some(data) => out.extend(data),
            None => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Boots a VM and connects its agent; `None` when no image is configured.
async fn boot(work: &Path) -> Option<(Box<dyn hypervisor::Vm>, Box<dyn Agent>, PathBuf)> {
    let images = testing::guest_image_dir()?;
    let cfg = vm_config(&images, work);
    let shared = cfg.shared_dir.clone();
    let vm = Qemu::new()
        .launch(cfg, &VmOptions::default())
        .await
        .expect("launch");
    let addr = match vm.vsock() {
        VsockEndpoint::Hybrid { uds_path } => Address::Hybrid {
            uds_path,
            port: protocols::AGENT_VSOCK_PORT,
        },
        VsockEndpoint::Kernel { cid } => Address::Vsock {
            cid,
            port: protocols::AGENT_VSOCK_PORT,
        },
    };
    let tail = || vm.console_tail();
    match connect(&addr, Duration::from_secs(60), &tail).await {
        Ok(a) => Some((vm, a, shared)),
        Err(e) => {
            let _ = vm.stop().await;
            panic!("connect: {e}");
        }
    }
}

async fn sandbox_with_container(agent: &dyn Agent, shared: &Path, cid: &str, args: &[&str]) {
    agent
        .create_sandbox(CreateSandboxRequest {
            hostname: "sb".into(),
            ..testing::shared_fs_sandbox("agentvm")
        })
        .await
        .expect("create sandbox");
    testing::busybox_rootfs(shared, cid).expect("busybox rootfs");
    let req = CreateContainerRequest {
        container_id: cid.into(),
        exec_id: cid.into(),
        OCI: Some(testing::busybox_spec(cid, args)).into(),
        ..Default::default()
    };
    agent.create_container(req).await.expect("create container");
}

/// What a pending WaitProcess sees when QEMU dies under it, and when the VM is
/// then stopped: the shim must not hang on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_calls_end_when_vm_dies() {
    let work = tempfile::Builder::new()
        .prefix("agent-vm-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let Some((vm, agent, shared)) = boot(work.path()).await else {
        return;
    };
    let agent: std::sync::Arc<dyn Agent> = std::sync::Arc::from(agent);
    sandbox_with_container(agent.as_ref(), &shared, "c1", &["sh", "-c", "sleep 1000"]).await;
    agent.start_container("c1").await.expect("start");
    let a = agent.clone();
    let waiter = tokio::spawn(async move { a.wait_process("c1", "").await });
    let a = agent.clone();
    let reader = tokio::spawn(async move { a.read_stdout("c1", "", 1024).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished() && !reader.is_finished());

    let qemu = i32::try_from(vm.pids()[0]).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill qemu");
    tokio::time::timeout(Duration::from_secs(1), vm.wait_exit())
        .await
        .expect("exit seen");
    let t = Instant::now();
    let before_stop = tokio::time::timeout(Duration::from_secs(2), async {
        while !waiter.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok();
    eprintln!(
        "WaitProcess ended by QEMU's death alone: {before_stop} ({:?})",
        t.elapsed()
    );
    vm.stop().await.expect("stop");
    let r = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("WaitProcess ends after stop");
    eprintln!(
        "WaitProcess result: {:?}",
        r.expect("join").map_err(|e| e.to_string())
    );
    let r = tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .expect("ReadStdout ends after stop");
    assert_eq!(r.expect("join").expect("read is never an error"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_in_real_guest() {
    let work = tempfile::Builder::new()
        .prefix("agent-vm-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let t0 = Instant::now();
    let Some((vm, agent, shared)) = boot(work.path()).await else {
        return;
    };
    eprintln!("agent answered {:?} after launch started", t0.elapsed());

    let result = async move {
        let v = agent.version().await.expect("version");
        eprintln!("agent version {}", v.agent_version);
        let script = ["sh", "-c", "echo out; echo err >&2; exit 7"];
        sandbox_with_container(agent.as_ref(), &shared, "c1", &script).await;
        let t = Instant::now();
        agent.start_container("c1").await.expect("start");
        let (out, err) = tokio::join!(
            drain(agent.as_ref(), "c1", false),
            drain(agent.as_ref(), "c1", true)
        );
        assert_eq!(out, "out\n");
        assert_eq!(err, "err\n");
        assert_eq!(agent.wait_process("c1", "").await.expect("wait"), 7);
        eprintln!("container start → output + exit in {:?}", t.elapsed());
        let e = agent
            .start_container("nope")
            .await
            .expect_err("unknown container");
        assert!(
            matches!(
                e.code(),
                Some(Code::NOT_FOUND) | Some(Code::FAILED_PRECONDITION)
            ),
            "{e}"
        );
        agent.remove_container("c1", 10).await.expect("remove");
        agent.destroy_sandbox().await.expect("destroy sandbox");
    };
    // Stop the VM whatever happened.
    let outcome = tokio::spawn(result).await;
    vm.stop().await.expect("stop");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
