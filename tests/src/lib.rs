//! Test harness: a private containerd (own root, state and socket; never the
//! system's), the project's offline busybox image, `ctr` helpers, and leak
//! checks for VMs, helper daemons, mounts and directories.

pub mod leaks;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const IMAGE: &str = "docker.io/library/kata-busybox:latest";
pub const RUNTIME: &str = "io.containerd.kata.v2";
pub const NAMESPACE: &str = "kata-test";

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where `make image` put the guest kernel and initramfs.
pub fn guest_dir() -> PathBuf {
    let build = std::env::var_os("BUILD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("build"));
    build.join("guest")
}

/// Directory holding the built `containerd-shim-kata-v2`.
pub fn shim_dir() -> PathBuf {
    repo_root().join("target/release")
}

/// Whether the VM tests can run here (root, built guest image and shim).
pub fn vm_tests_ready() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("VM tests need root");
    }
    for p in [
        guest_dir().join("vmlinux"),
        guest_dir().join("initrd.img"),
        shim_dir().join("containerd-shim-kata-v2"),
    ] {
        if !p.exists() {
            bail!("{} is missing: run `make build image` first", p.display());
        }
    }
    Ok(())
}

/// Writes a shim configuration (Kata format) for the built guest assets;
/// `edit` may change the text (e.g. break the kernel path).
pub fn write_config(path: &Path, edit: impl Fn(String) -> String) -> Result<()> {
    let template = std::fs::read_to_string(repo_root().join("shim/configuration.toml.in"))?;
    let text = template
        .replace("@ASSETS@", &guest_dir().to_string_lossy())
        .replace("@BINDIR@", "/usr/local/bin")
        .replace("enable_debug = false", "enable_debug = true");
    std::fs::write(path, edit(text))?;
    Ok(())
}

/// A private containerd for one test binary.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    child: Child,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Containerd {
    /// Starts containerd with the shim on its PATH and imports the test image.
    pub fn start() -> Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!(
            "/var/lib/kata-shim-test/{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("kata.toml");
        write_config(&config, |t| t)?;
        let ctd_config = dir.join("containerd.toml");
        std::fs::write(
            &ctd_config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}\"\n[debug]\n  level = \"debug\"\n",
                d = dir.display(),
                s = socket.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let path = format!(
            "{}:{}",
            shim_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&ctd_config)
            .env("PATH", path)
            .env("KATA_CONF_FILE", &config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (apt-get install containerd)")?;
        let ctd = Containerd {
            dir,
            socket,
            config,
            child,
        };
        wait_until(Duration::from_secs(20), || ctd.socket.exists())
            .context("containerd socket did not appear")?;
        ctd.import_image()?;
        Ok(ctd)
    }

    fn import_image(&self) -> Result<()> {
        let tar = self.dir.join("busybox.tar");
        let st = Command::new(repo_root().join("tests/scripts/busybox-image.sh"))
            .arg(&tar)
            .arg(IMAGE)
            .status()?;
        if !st.success() {
            bail!("building the busybox image failed");
        }
        let out = self.ctr(&["images", "import", &tar.to_string_lossy()])?;
        if !out.status.success() {
            bail!(
                "ctr images import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs `ctr` against this containerd in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ctr")
    }

    /// `ctr run --rm --runtime io.containerd.kata.v2 IMAGE ID CMD...`
    pub fn run(&self, id: &str, extra: &[&str], cmd: &[&str]) -> Result<Output> {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// containerd's ttrpc socket, where shims publish events.
    pub fn ttrpc_socket(&self) -> PathBuf {
        PathBuf::from(format!("{}.ttrpc", self.socket.display()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.join("root"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("condition not met within {timeout:?}")
}
