//! The launch / supervision / stop paths against a scripted stand-in for QEMU
//! (a small python3 program speaking QMP), so they run without a guest image
//! or KVM: kernel vhost-vsock CID retry on EADDRINUSE, QMP quit, helper death.
//! Skipped (with a message) where python3 is missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hypervisor::{
    Accel, HostProbe, Hypervisor, MachineType, Qemu, VmConfig, VmOptions, VsockEndpoint, VsockKind,
};

const FAKE_QEMU: &str = r#"
import json, os, socket, sys
args = sys.argv[1:]
counter = sys.argv[0] + ".attempts"
n = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(n + 1))
dev = next((a for a in args if a.startswith("vhost-vsock-pci,guest-cid=")), None)
if dev and n < BUSY_ATTEMPTS:
    sys.stderr.write("qemu-system-x86_64: -device " + dev + ": vhost-vsock: unable to set guest cid: Address already in use\n")
    sys.exit(1)
with open(sys.argv[0] + ".args", "w") as f:
    f.write("\n".join(args))
path = args[args.index("-qmp") + 1][len("unix:"):].split(",")[0]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(4)
print("fake guest console line", flush=True)
while True:
    conn, _ = srv.accept()
    f = conn.makefile("rw")
    f.write('{"QMP": {"version": {}, "capabilities": []}}\n'); f.flush()
    for line in f:
        req = json.loads(line)
        cmd = req["execute"]
        with open(sys.argv[0] + ".qmp", "a") as log:
            log.write(line.strip() + "\n")
        if cmd == "quit" and HANG_QUIT:
            continue
        ret = {"status": "running", "running": True} if cmd == "query-status" else {}
        f.write(json.dumps({"return": ret, "id": req.get("id")}) + "\n"); f.flush()
        if cmd == "quit":
            sys.exit(0)
"#;

fn python3() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("python3"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        agent_client::testing::skip_unless_required("python3 not found");
    }
    found
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

struct Fixture {
    _dir: tempfile::TempDir,
    config: VmConfig,
    probe: HostProbe,
    qemu: PathBuf,
}

fn fixture(python: &Path, busy_attempts: u32, vhost_device: bool, hang_quit: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let qemu = script(
        d,
        "qemu",
        &format!(
            "#!{}\nBUSY_ATTEMPTS = {busy_attempts}\nHANG_QUIT = {}\n{FAKE_QEMU}",
            python.display(),
            if hang_quit { "True" } else { "False" }
        ),
    );
    // Helpers: create the socket path they are given, then stay up.
    let virtiofsd = script(d, "virtiofsd", "#!/bin/sh\ntouch \"$2\"\nexec sleep 60\n");
    let vdv = script(d, "vdv", "#!/bin/sh\ntouch \"$4\"\nexec sleep 60\n");
    let file = |n: &str| {
        let p = d.join(n);
        std::fs::write(&p, b"x").expect("fixture file");
        p
    };
    let probe = HostProbe {
        kvm_device: d.join("no-kvm"),
        pvm_module: d.join("no-pvm"),
        vhost_vsock_device: if vhost_device {
            file("vhost-vsock")
        } else {
            d.join("no-vhost-vsock")
        },
    };
    std::fs::create_dir_all(d.join("shared")).expect("shared");
    let config = VmConfig {
        id: "fake1".into(),
        run_dir: d.join("run"),
        qemu_path: qemu.clone(),
        kernel: file("vmlinux"),
        initrd: file("initrd.img"),
        kernel_params: String::new(),
        machine: MachineType::Q35,
        accel: Accel::Auto,
        vcpus: 1,
        memory_mib: 128,
        vsock: VsockKind::Auto,
        vhost_device_vsock_path: vdv,
        shared_dir: d.join("shared"),
        virtiofsd_path: virtiofsd,
        start_timeout: Duration::from_secs(10),
        console_ready: None,
        network: None,
    };
    Fixture {
        _dir: dir,
        config,
        probe,
        qemu,
    }
}

fn alive(pid: u32) -> bool {
    hypervisor::process::proc_start_time(pid).is_some()
}

#[tokio::test]
async fn kernel_vsock_retries_busy_cids() {
    let Some(py) = python3() else { return };
    let f = fixture(&py, 2, true, false);
    let vm = Qemu::with_probe(f.probe.clone())
        .launch(f.config.clone(), &VmOptions::default())
        .await
        .expect("launch after CID retries");
    let VsockEndpoint::Kernel { cid } = vm.vsock() else {
        panic!("expected kernel vsock, got {:?}", vm.vsock());
    };
    assert!(cid >= 3);
    let attempts = std::fs::read_to_string(f.qemu.with_extension("attempts")).expect("counter");
    assert_eq!(attempts, "3");
    let args = std::fs::read_to_string(f.qemu.with_extension("args")).expect("args");
    assert!(
        args.contains(&format!("vhost-vsock-pci,guest-cid={cid}")),
        "{args}"
    );
    assert!(
        args.contains("tcg,thread=multi"),
        "no KVM in the probe: {args}"
    );
    assert!(!args.contains("vhost-user-vsock"), "{args}");
    // Only virtiofsd as helper with kernel vsock.
    let pids = vm.pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    vm.check().await.expect("query-status");
    vm.stop().await.expect("stop");
    assert!(pids.iter().all(|p| !alive(*p)), "left: {pids:?}");
    assert!(!f.config.run_dir.exists());
}

#[tokio::test]
async fn vhost_user_launch_and_helper_death() {
    let Some(py) = python3() else { return };
    let f = fixture(&py, 0, false, false);
    let vm = Qemu::with_probe(f.probe.clone())
        .launch(f.config.clone(), &VmOptions::default())
        .await
        .expect("launch");
    assert_eq!(
        vm.vsock(),
        VsockEndpoint::Hybrid {
            uds_path: f.config.run_dir.join("vsock.sock")
        }
    );
    let state = std::fs::read_to_string(f.config.run_dir.join("state.json")).expect("state");
    assert!(
        state.contains("virtiofsd")
            && state.contains("vhost-device-vsock")
            && state.contains("qemu"),
        "{state}"
    );
    let pids = vm.pids();
    assert_eq!(pids.len(), 3, "{pids:?}");
    // A helper dying ends the VM too.
    let virtiofsd = i32::try_from(pids[1]).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(virtiofsd),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill helper");
    tokio::time::timeout(Duration::from_secs(1), vm.wait_exit())
        .await
        .expect("wait_exit after helper death");
    assert!(vm.exit_reason().unwrap_or_default().contains("virtiofsd"));
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !vm.console_tail().contains("fake guest console line")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        vm.console_tail().contains("fake guest console line"),
        "{}",
        vm.console_tail()
    );
    vm.stop().await.expect("stop");
    vm.stop().await.expect("stop again");
    assert!(pids.iter().all(|p| !alive(*p)), "left: {pids:?}");
    assert!(!f.config.run_dir.exists());
}

#[tokio::test]
async fn stop_kills_qemu_that_ignores_quit() {
    let Some(py) = python3() else { return };
    let f = fixture(&py, 0, false, true);
    let vm = Qemu::with_probe(f.probe.clone())
        .launch(f.config.clone(), &VmOptions::default())
        .await
        .expect("launch");
    let pids = vm.pids();
    let t0 = std::time::Instant::now();
    vm.stop().await.expect("stop");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        vm.exit_reason().unwrap_or_default().contains("signal: 9"),
        "{:?}",
        vm.exit_reason()
    );
    assert!(pids.iter().all(|p| !alive(*p)), "left: {pids:?}");
    assert!(!f.config.run_dir.exists());
}

/// NIC hotplug: netdev_add of the tap by name, then a virtio-net-pci into
/// the next free root port of the command line; refused once all are used.
#[tokio::test]
async fn nic_hotplug_fills_the_root_ports_in_order() {
    let Some(py) = python3() else { return };
    // QEMU is started in the pod's netns: our own here (setns needs root).
    if !nix_is_root() {
        agent_client::testing::skip_unless_required("not root");
        return;
    }
    let mut f = fixture(&py, 0, false, false);
    f.config.network = Some(hypervisor::NetworkConfig {
        netns: PathBuf::from("/proc/self/ns/net"),
        nics: vec![hypervisor::NicConfig {
            tap: "tap0_kata".into(),
            mac: "ca:fe:00:00:00:01".into(),
        }],
    });
    let vm = Qemu::with_probe(f.probe.clone())
        .launch(f.config.clone(), &VmOptions::default())
        .await
        .expect("launch");
    let args = std::fs::read_to_string(f.qemu.with_extension("args")).expect("args");
    assert!(
        args.contains("virtio-net-pci,id=nic0,netdev=net0,mac=ca:fe:00:00:00:01"),
        "{args}"
    );
    let ports = hypervisor::cmdline::net::NIC_HOTPLUG_PORTS;
    assert_eq!(
        args.matches("pcie-root-port,").count() as u32,
        ports,
        "{args}"
    );
    for n in 1..=ports {
        vm.hotplug_nic(&hypervisor::NicConfig {
            tap: format!("tap{n}_kata"),
            mac: format!("ca:fe:00:00:00:{:02x}", n + 1),
        })
        .await
        .expect("hotplug");
    }
    let full = vm
        .hotplug_nic(&hypervisor::NicConfig {
            tap: "tap9_kata".into(),
            mac: "ca:fe:00:00:00:09".into(),
        })
        .await;
    assert!(
        matches!(full, Err(hypervisor::Error::InvalidConfig(_))),
        "{full:?}"
    );
    let qmp = std::fs::read_to_string(f.qemu.with_extension("qmp")).expect("qmp log");
    let cmds: Vec<serde_json::Value> = qmp
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .filter(|v: &serde_json::Value| {
            matches!(v["execute"].as_str(), Some("netdev_add" | "device_add"))
        })
        .collect();
    assert_eq!(cmds.len() as u32, 2 * ports, "{qmp}");
    assert_eq!(cmds[0]["arguments"]["ifname"], "tap1_kata");
    assert_eq!(cmds[0]["arguments"]["id"], "net1", "boot NIC is net0");
    assert_eq!(cmds[1]["arguments"]["driver"], "virtio-net-pci");
    assert_eq!(cmds[1]["arguments"]["bus"], "nic-port0");
    assert_eq!(cmds[1]["arguments"]["mac"], "ca:fe:00:00:00:02");
    assert_eq!(cmds[3]["arguments"]["bus"], "nic-port1");
    vm.stop().await.expect("stop");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
