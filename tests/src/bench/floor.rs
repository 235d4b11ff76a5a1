//! The VM floor: the same guest kernel booted by QEMU with the fastest path
//! this machine allows (PVH boot of the uncompressed `vmlinux`, q35, the
//! accelerator `auto` resolves to, hybrid vsock through vhost-device-vsock)
//! and a trivial static init that writes one byte to vsock port 1024.
//! Timed from QEMU's launch to that byte arriving on the host's
//! `<uds-path>_1024` listener. With `bench.bytes=N` the init then streams
//! N zero bytes: the raw vsock throughput floor.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hypervisor::accel::{resolve_accel, ResolvedAccel};
use hypervisor::{Accel, HostProbe};

/// The init's C source (built with `gcc -static`).
const INIT_C: &str = include_str!("floor_init.c");
/// Modules the floor's init loads (and their dependencies, which the guest
/// image's load order lists first).
const VSOCK_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// Guest size: the shim's defaults (`default_vcpus`, `default_memory`).
pub const VCPUS: u32 = 1;
pub const MEMORY_MIB: u32 = 256;

/// A prepared floor: kernel, initramfs, accelerator.
pub struct Floor {
    work: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    pub accel: ResolvedAccel,
    pub accel_reason: String,
    next: u32,
}

/// One floor boot.
#[derive(Debug, Clone, Copy)]
pub struct FloorSample {
    /// QEMU launch to the first byte on the host.
    pub first_byte: Duration,
    /// Bytes streamed after the first and how long they took.
    pub stream: Option<(u64, Duration)>,
}

impl Floor {
    /// Builds the init and its initramfs under `work` from the guest image's
    /// modules (`guest_dir`/initrd.img holds them, uncompressed cpio).
    pub fn prepare(work: &Path, guest_dir: &Path) -> Result<Floor> {
        let stage = work.join("floor-initrd");
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage)?;
        let src = work.join("floor_init.c");
        std::fs::write(&src, INIT_C)?;
        run(Command::new("gcc")
            .args(["-static", "-Os", "-o"])
            .arg(stage.join("init"))
            .arg(&src))
        .context("compiling the floor's init (apt-get install gcc libc6-dev)")?;

        // The guest image's modules: extract lib/modules from its initramfs.
        let initrd_src = guest_dir.join("initrd.img");
        let listing = output(
            Command::new("cpio").arg("-it").stdin(
                std::fs::File::open(&initrd_src)
                    .with_context(|| format!("opening {}", initrd_src.display()))?,
            ),
        )?;
        let wanted: Vec<&str> = listing
            .lines()
            .filter(|l| l.starts_with("lib/modules/"))
            .collect();
        if wanted.is_empty() {
            bail!(
                "{} holds no lib/modules (compressed initrd?)",
                initrd_src.display()
            );
        }
        run(Command::new("cpio")
            .args(["-id", "--quiet"])
            .args(&wanted)
            .current_dir(&stage)
            .stdin(std::fs::File::open(&initrd_src)?))?;
        let order = std::fs::read_to_string(stage.join("lib/modules/load-order"))
            .context("guest image has no lib/modules/load-order")?;
        let keep: Vec<&str> = order
            .lines()
            .filter(|p| {
                let base = p.rsplit('/').next().unwrap_or("");
                let name = base.trim_end_matches(".ko").replace('-', "_");
                VSOCK_MODULES.contains(&name.as_str())
            })
            .collect();
        for entry in std::fs::read_dir(stage.join("lib/modules"))? {
            let entry = entry?;
            let path = format!("/lib/modules/{}", entry.file_name().to_string_lossy());
            if path.ends_with(".ko") && !keep.contains(&path.as_str()) {
                std::fs::remove_file(entry.path())?;
            }
        }
        std::fs::write(stage.join("lib/modules/load-order"), keep.join("\n") + "\n")?;
        std::fs::create_dir_all(stage.join("proc"))?;
        let initrd = work.join("floor-initrd.img");
        let cpio = std::fs::File::create(&initrd)?;
        let files = output(
            Command::new("find")
                .args([".", "-mindepth", "1", "-printf", "%P\\n"])
                .current_dir(&stage),
        )?;
        let mut child = Command::new("cpio")
            .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
            .current_dir(&stage)
            .stdin(Stdio::piped())
            .stdout(cpio)
            .spawn()
            .context("cpio")?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, files.as_bytes())?;
        }
        if !child.wait()?.success() {
            bail!("cpio -o failed");
        }
        let (accel, accel_reason) = resolve_accel(Accel::Auto, &HostProbe::default())?;
        Ok(Floor {
            work: work.to_path_buf(),
            kernel: guest_dir.join("vmlinux"),
            initrd,
            accel,
            accel_reason,
            next: 0,
        })
    }

    /// The QEMU arguments for one boot: what the hypervisor crate passes
    /// for q35 + PVH + hybrid vsock, minus QMP and virtio-fs. Written out
    /// here (not built from the crate's typed pieces) so the floor stays
    /// fixed while that command line evolves.
    fn qemu_args(&self, vhost_socket: &Path, extra_params: &str) -> Vec<String> {
        let (accel, cpu) = match self.accel {
            ResolvedAccel::Kvm => ("kvm", "host"),
            // The CPU the shim gives a TCG guest (no ERMS: faster copies).
            ResolvedAccel::Tcg => ("tcg,thread=multi", hypervisor::cmdline::machine::TCG_CPU),
        };
        let append = format!("console=ttyS0 panic=-1 reboot=k {extra_params}");
        let mut args: Vec<String> = [
            "-name",
            "bench-floor",
            "-machine",
            "q35,memory-backend=mem",
            "-accel",
            accel,
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on"),
            "-m",
            &format!("{MEMORY_MIB}M"),
            "-smp",
            &VCPUS.to_string(),
            "-cpu",
            cpu,
            "-kernel",
            &self.kernel.to_string_lossy(),
            "-initrd",
            &self.initrd.to_string_lossy(),
            "-append",
            &append,
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-chardev",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!(
            "socket,id=vsock,path={}",
            vhost_socket.to_string_lossy().replace(',', ",,")
        ));
        args.push("-device".into());
        args.push("vhost-user-vsock-pci,chardev=vsock".into());
        args
    }

    /// Boots once; `stream_bytes` > 0 also measures the raw vsock stream.
    pub fn boot(&mut self, stream_bytes: u64) -> Result<FloorSample> {
        self.next += 1;
        let dir = self.work.join(format!("floor-{}", self.next));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let vhost_socket = dir.join("vhost.sock");
        let uds = dir.join("vsock.sock");
        let listener = UnixListener::bind(format!("{}_1024", uds.display()))?;
        let helper = Guard(
            Command::new("vhost-device-vsock")
                .arg("--guest-cid")
                .arg("3")
                .arg("--socket")
                .arg(&vhost_socket)
                .arg("--uds-path")
                .arg(&uds)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting vhost-device-vsock")?,
        );
        integration_tests::wait_until(Duration::from_secs(10), || vhost_socket.exists())
            .context("vhost-device-vsock socket")?;

        // Every accepted connection gets its own reader: a guest connect that
        // timed out and was retried leaves a connection behind that never
        // carries data (nor closes while the VM runs). The first reader to
        // get a byte reports.
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true)?;
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let tx = tx.clone();
                            std::thread::spawn(move || {
                                if let Some(r) = read_stream(s, stream_bytes) {
                                    let _ = tx.send(r);
                                }
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        let params = if stream_bytes > 0 {
            format!("quiet bench.bytes={stream_bytes}")
        } else {
            "quiet".to_string()
        };
        let params = match std::env::var("KATA_BENCH_FLOOR_PARAMS") {
            Ok(p) => p.replace("quiet", "") + " " + &params.replace("quiet", ""),
            Err(_) => params,
        };
        let args = self.qemu_args(&vhost_socket, &params);
        let launched = Instant::now();
        let qemu = Guard(
            Command::new("qemu-system-x86_64")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("console.log"))?)
                .stderr(std::fs::File::create(dir.join("qemu.err"))?)
                .spawn()
                .context("starting qemu-system-x86_64")?,
        );
        let timeout = Duration::from_secs(60 + stream_bytes / (1 << 20));
        let got = rx.recv_timeout(timeout);
        stop.store(true, Ordering::SeqCst);
        drop(qemu);
        drop(helper);
        let _ = acceptor.join();
        let (first, total, end) = got
            .context("floor guest wrote nothing to vsock port 1024")?
            .context("reading the floor guest's vsock stream")?;
        if std::env::var_os("KATA_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(FloorSample {
            first_byte: first - launched,
            stream: (stream_bytes > 0).then_some((total, end - first)),
        })
    }
}

/// Reads one connection: `None` if it closes before its first byte, else
/// (first byte's arrival, bytes after it, arrival of the last). Stops after
/// `expected` bytes (the guest's half-close does not reach the host socket)
/// and closes, which lets the guest power off.
fn read_stream(
    mut s: std::os::unix::net::UnixStream,
    expected: u64,
) -> Option<std::io::Result<(Instant, u64, Instant)>> {
    s.set_nonblocking(false).ok()?;
    let mut one = [0u8; 1];
    match s.read(&mut one) {
        Ok(1) => {}
        Ok(_) => return None,
        Err(e) => return Some(Err(e)),
    }
    let first = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    while total < expected {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok((first, total, Instant::now())))
}

/// Kills and reaps a child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
