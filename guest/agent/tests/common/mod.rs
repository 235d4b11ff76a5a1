//! Test harness shared by the VM tests: boots QEMU with the guest image and
//! its helper daemons, dials the agent over hybrid vsock, builds specs.
#![allow(dead_code)]
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use protocols::agent::*;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;

pub const SHARED: &str = agent_client::testing::GUEST_SHARED_DIR;
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Vm {
    pub dir: tempfile::TempDir,
    pub helpers: Vec<Child>,
    pub qemu: Option<Child>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- guest console ---\n{}", self.console());
        }
        for c in self.helpers.iter_mut().chain(self.qemu.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn which(name: &str) -> PathBuf {
    for dir in ["/usr/local/bin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

pub fn wait_for(path: &Path, what: &str) -> Result<()> {
    let t0 = Instant::now();
    while !path.exists() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("{what} did not create {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A busybox rootfs for container `cid` under the shared directory.
pub fn make_rootfs(shared: &Path, cid: &str) -> Result<()> {
    let bin = shared.join(cid).join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["proc", "sys", "dev", "tmp", "etc", "run", "var"] {
        std::fs::create_dir_all(shared.join(cid).join("rootfs").join(d))?;
    }
    // As in Debian images: an absolute symlink the agent must resolve inside the rootfs.
    std::os::unix::fs::symlink("/run", shared.join(cid).join("rootfs/var/run"))?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))?;
    std::fs::write(
        shared.join(cid).join("rootfs/etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
    )?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
    }
    Ok(())
}

impl Vm {
    pub fn boot(image: &Path) -> Result<Vm> {
        let dir = tempfile::Builder::new()
            .prefix("kata-guest-")
            .tempdir_in("/tmp")?;
        let d = dir.path().to_path_buf();
        std::fs::create_dir_all(d.join("shared"))?;
        let mut vm = Vm {
            dir,
            helpers: Vec::new(),
            qemu: None,
        };
        let log = |name: &str| -> Result<Stdio> { Ok(std::fs::File::create(d.join(name))?.into()) };
        vm.helpers.push(
            Command::new(which("vhost-device-vsock"))
                .args(["--guest-cid", "3", "--socket"])
                .arg(d.join("vhost.sock"))
                .arg("--uds-path")
                .arg(d.join("vsock.sock"))
                .stdout(log("vsock.log")?)
                .stderr(log("vsock.err")?)
                .spawn()
                .context("vhost-device-vsock")?,
        );
        vm.helpers.push(
            Command::new(which("virtiofsd"))
                .arg("--socket-path")
                .arg(d.join("fs.sock"))
                .arg("--shared-dir")
                .arg(d.join("shared"))
                .args(["--sandbox", "none", "--cache"])
                // `always`: the guest keeps file pages across opens. With
                // virtiofsd's default (`auto`) every open drops them, so every
                // exec re-reads its program from the host: 226 ms per busybox
                // exec instead of 13 here (tests/latency.rs), the bulk of the
                // 1000-exec check. KATA_TEST_VIRTIOFS_CACHE=auto compares.
                .arg(std::env::var("KATA_TEST_VIRTIOFS_CACHE").unwrap_or_else(|_| "always".into()))
                .stdout(log("fs.log")?)
                .stderr(log("fs.err")?)
                .spawn()
                .context("virtiofsd")?,
        );
        wait_for(&d.join("vhost.sock"), "vhost-device-vsock")?;
        wait_for(&d.join("fs.sock"), "virtiofsd")?;
        let accel = std::env::var("KATA_TEST_ACCEL").unwrap_or_else(|_| "tcg,thread=multi".into());
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35,memory-backend=mem", "-accel", &accel])
            .args([
                "-object",
                "memory-backend-memfd,id=mem,size=512M,share=on",
                "-m",
                "512M",
            ])
            // The shim's TCG CPU (hypervisor's TCG_CPU): no ERMS, faster copies.
            .args(["-smp", "2", "-cpu", "max,erms=off", "-kernel"])
            .arg(image.join("vmlinux"))
            .arg("-initrd")
            .arg(image.join("initrd.img"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet agent.log_vport=1025 {}",
                // e.g. KATA_AGENT_LOG=debug: the kernel hands unknown KEY=value to init's env.
                std::env::var("KATA_TEST_KERNEL_ARGS").unwrap_or_default()
            ))
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
            ])
            .arg(format!("file:{}", d.join("console.log").display()))
            .arg("-chardev")
            .arg(format!(
                "socket,id=vs,path={}",
                d.join("vhost.sock").display()
            ))
            .args(["-device", "vhost-user-vsock-pci,chardev=vs", "-chardev"])
            .arg(format!("socket,id=fs,path={}", d.join("fs.sock").display()))
            .args(["-device", "vhost-user-fs-pci,chardev=fs,tag=kataShared"])
            .stdout(log("qemu.log")?)
            .stderr(log("qemu.err")?)
            .spawn()
            .context("qemu")?;
        vm.qemu = Some(qemu);
        Ok(vm)
    }

    pub fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// What the helpers and QEMU printed (for a failure's report).
    pub fn helper_logs(&self) -> String {
        ["qemu.err", "vsock.err", "fs.err"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                format!("--- {f} ---\n{text}")
            })
            .collect()
    }

    /// Hybrid vsock to the agent's port 1024.
    pub fn dial(&self, deadline: Duration) -> Result<UnixStream> {
        self.dial_port(1024, deadline)
    }

    /// Hybrid vsock: `CONNECT <port>\n`, then one line starting with `OK`.
    pub fn dial_port(&self, port: u32, deadline: Duration) -> Result<UnixStream> {
        let t0 = Instant::now();
        // No CONNECT before the guest's vsock driver has set up its vrings:
        // host traffic earlier can cost vhost-device-vsock 0.3.0 its worker,
        // and every CONNECT after that goes unanswered (~1 boot in 15 here;
        // the shim's vsock gate waits for the same reason). The agent's
        // "agent ready" console line comes after the driver's probe. Without
        // that line (a log filter above info) the dial goes ahead at the deadline.
        while !self.console().contains(protocols::AGENT_READY_LINE) && t0.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            let attempt = || -> Result<UnixStream> {
                let mut s = UnixStream::connect(self.dir.path().join("vsock.sock"))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(format!("CONNECT {port}\n").as_bytes())?;
                // Byte by byte: a BufReader would swallow what the guest sends
                // right after the answer (the log port's backlog, with the
                // project's kernel fast enough to land in the same read).
                let mut line = String::new();
                let mut byte = [0u8; 1];
                while line.len() < 64 {
                    s.read_exact(&mut byte)?;
                    if byte[0] == b'\n' {
                        break;
                    }
                    line.push(byte[0] as char);
                }
                if !line.starts_with("OK") {
                    bail!("handshake answered {line:?}");
                }
                s.set_read_timeout(None)?;
                Ok(s)
            };
            match attempt() {
                Ok(s) => return Ok(s),
                Err(e) if t0.elapsed() > deadline => return Err(e.context("dialing the agent")),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

pub fn code(e: &ttrpc::Error) -> Option<ttrpc::Code> {
    match e {
        ttrpc::Error::RpcStatus(s) => Some(s.code()),
        _ => None,
    }
}

pub fn container_spec(cid: &str, args: &[&str]) -> oci::Spec {
    let mount = |dest: &str, typ: &str, opts: &[&str]| oci::Mount {
        destination: dest.into(),
        source: typ.into(),
        type_: typ.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let ns = |t: &str| oci::LinuxNamespace {
        Type: t.into(),
        ..Default::default()
    };
    oci::Spec {
        Version: "1.1.0".into(),
        Hostname: "testhost".into(),
        Process: Some(oci::Process {
            Args: args.iter().map(|s| s.to_string()).collect(),
            Env: vec!["PATH=/bin".into(), "HOME=/".into()],
            Cwd: "/".into(),
            User: Some(oci::User::default()).into(),
            ..Default::default()
        })
        .into(),
        Root: Some(oci::Root {
            Path: format!("{SHARED}/{cid}/rootfs"),
            ..Default::default()
        })
        .into(),
        Mounts: vec![
            mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            ),
            mount(
                "/dev/shm",
                "tmpfs",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            mount("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
            mount(
                "/sys/fs/cgroup",
                "cgroup",
                &["nosuid", "noexec", "nodev", "relatime", "ro"],
            ),
        ],
        Linux: Some(oci::Linux {
            Namespaces: vec![ns("pid"), ns("mount"), ns("ipc"), ns("uts"), ns("network")],
            Resources: Some(oci::LinuxResources {
                Memory: Some(oci::LinuxMemory {
                    Limit: 64 << 20,
                    ..Default::default()
                })
                .into(),
                Pids: Some(oci::LinuxPids {
                    Limit: 100,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            MaskedPaths: vec!["/proc/kcore".into(), "/proc/keys".into()],
            ReadonlyPaths: vec!["/proc/sys".into()],
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

pub fn create_req(cid: &str, spec: oci::Spec) -> CreateContainerRequest {
    CreateContainerRequest {
        container_id: cid.into(),
        exec_id: cid.into(),
        OCI: Some(spec).into(),
        ..Default::default()
    }
}

/// Reads a stream until the agent's EOF error.
pub async fn drain(
    agent: &AgentServiceClient,
    cid: &str,
    exec_id: &str,
    stderr: bool,
) -> Result<String> {
    let mut out = Vec::new();
    loop {
        let req = ReadStreamRequest {
            container_id: cid.into(),
            exec_id: exec_id.into(),
            len: 4096,
            ..Default::default()
        };
        let r = if stderr {
            agent.read_stderr(ctx(), &req).await
        } else {
            agent.read_stdout(ctx(), &req).await
        };
        match r {
            Ok(resp) => out.extend_from_slice(&resp.data),
            // The end of a stream: INTERNAL "EOF", as upstream agents answer.
            Err(ttrpc::Error::RpcStatus(s))
                if s.code() == ttrpc::Code::INTERNAL && s.message() == "EOF" =>
            {
                break
            }
            Err(e) => bail!("read stream: {e:?}"),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

pub async fn wait(agent: &AgentServiceClient, cid: &str, exec_id: &str) -> Result<i32> {
    let req = WaitProcessRequest {
        container_id: cid.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    Ok(agent.wait_process(ctx(), &req).await?.status)
}
