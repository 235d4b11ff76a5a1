//! Test harness: a private containerd (own root, state and socket; never the
//! system's), the project's offline busybox image, `ctr` helpers, and leak
//! checks for VMs, helper daemons, mounts and directories. With
//! [`Containerd::start_cri`] the same containerd also serves Kubernetes CRI
//! (see [`cri`]).

pub mod cri;
pub mod dist;
pub mod leaks;

pub use dist::{Dist, Release};

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

/// Directory holding the built `containerd-shim-kata-v2` (cargo profile
/// `shim`, as `make build` builds it).
pub fn shim_dir() -> PathBuf {
    repo_root().join("target/shim")
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

/// Bytes a test printed, as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether a VM test can run; prints why not and returns false (skip), or
/// panics when `KATA_REQUIRE_VM=1` (CI, `make test`): a missing image or
/// shim must fail there, not pass as skipped. Use [`require_vm!`].
pub fn vm_test_can_run() -> bool {
    match vm_tests_ready() {
        Ok(()) => true,
        Err(e) => {
            agent_client::testing::skip_unless_required(&format!("{e:#}"));
            false
        }
    }
}

/// First line of a VM test returning `Result`: returns `Ok(())` (skipped)
/// when the test cannot run here, fails under `KATA_REQUIRE_VM=1`.
#[macro_export]
macro_rules! require_vm {
    () => {
        if !$crate::vm_test_can_run() {
            return Ok(());
        }
    };
}

/// Stops containerd, then checks that the test left no VM, helper daemon,
/// mount or directory behind (Task API tests, processes found by `ctd`'s
/// directory).
pub fn assert_no_leftovers(ctd: Containerd) {
    let scope = ctd.dir.clone();
    drop(ctd);
    let left = leaks::settle_and_check(&scope);
    assert!(left.is_empty(), "left behind: {left:#?}");
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

/// What a private containerd serves besides the Task API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// CRI disabled: tests drive it with `ctr`.
    Plain,
    /// CRI enabled with runtime handler `kata`, CNI, the pause image.
    Cri,
    /// As `Cri`, with `sandboxer = "shim"` for the `kata` handler
    /// (containerd 2.x only): pods through the shim's Sandbox API, no pause
    /// container.
    CriShimSandboxer,
}

impl Flavor {
    pub fn is_cri(self) -> bool {
        matches!(self, Flavor::Cri | Flavor::CriShimSandboxer)
    }
}

/// A private containerd for one test binary.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub flavor: Flavor,
    /// The CNI bridge of a CRI containerd (deleted on drop).
    pub bridge: Option<String>,
    /// Which containerd this is and where its binaries are.
    pub dist: Dist,
    child: Child,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Containerd {
    /// Starts containerd with the shim on its PATH and imports the test image.
    pub fn start() -> Result<Self> {
        Self::start_flavor(Flavor::Plain, Dist::system())
    }

    /// As [`Containerd::start`] on the containerd of `dist`.
    pub fn start_on(dist: &Dist) -> Result<Self> {
        Self::start_flavor(Flavor::Plain, dist.clone())
    }

    /// Starts containerd with its CRI plugin (runtime handler `kata`, CNI,
    /// pause image), and imports the test image into CRI's namespace too.
    pub fn start_cri() -> Result<Self> {
        Self::start_flavor(Flavor::Cri, Dist::system())
    }

    /// As [`Containerd::start_cri`] on the containerd of `dist`.
    pub fn start_cri_on(dist: &Dist) -> Result<Self> {
        Self::start_flavor(Flavor::Cri, dist.clone())
    }

    /// A CRI containerd 2.x whose `kata` handler uses `sandboxer = "shim"`.
    pub fn start_cri_sandbox_api(dist: &Dist) -> Result<Self> {
        if !dist.release.is_v2() {
            bail!("sandboxer = \"shim\" needs containerd 2.x");
        }
        Self::start_flavor(Flavor::CriShimSandboxer, dist.clone())
    }

    pub fn start_flavor(flavor: Flavor, dist: Dist) -> Result<Self> {
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
        let mut bridge = None;
        let text = match flavor {
            // containerd 2.x still reads `version = 2` (migrating it on every
            // start); the harness writes its native format.
            Flavor::Plain => format!(
                "version = {v}\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}\"\n[debug]\n  level = \"debug\"\n",
                v = if dist.release.is_v2() { 3 } else { 2 },
                d = dir.display(),
                s = socket.display()
            ),
            Flavor::Cri | Flavor::CriShimSandboxer => {
                let name = cri::config::bridge_name(n);
                cri::config::write_cni(&dir, &name)?;
                bridge = Some(name);
                cri::config::containerd_toml(
                    dist.release,
                    flavor == Flavor::CriShimSandboxer,
                    &dir,
                    &socket,
                    &config,
                )?
            }
        };
        std::fs::write(&ctd_config, text)?;
        let child = spawn_containerd(&dist, &dir, &config)?;
        let ctd = Containerd {
            dir,
            socket,
            config,
            flavor,
            bridge,
            dist,
            child,
        };
        wait_until(Duration::from_secs(20), || ctd.socket.exists())
            .with_context(|| format!("containerd socket did not appear\n{}", ctd.log()))?;
        let tar = ctd.dir.join("busybox.tar");
        ctd.build_image("busybox-image.sh", &tar, IMAGE)?;
        ctd.import_image(NAMESPACE, &tar)?;
        if flavor.is_cri() {
            ctd.import_image(cri::NAMESPACE, &tar)?;
            let pause = ctd.dir.join("pause.tar");
            ctd.build_image("pause-image.sh", &pause, cri::PAUSE_IMAGE)?;
            ctd.import_image(cri::NAMESPACE, &pause)?;
        }
        Ok(ctd)
    }

    /// Runs `tests/scripts/<script> OUT NAME` (an offline OCI archive builder).
    pub fn build_image(&self, script: &str, out: &Path, name: &str) -> Result<()> {
        let st = Command::new(repo_root().join("tests/scripts").join(script))
            .arg(out)
            .arg(name)
            .status()?;
        if !st.success() {
            bail!("{script} failed");
        }
        Ok(())
    }

    /// `ctr -n <namespace> images import <tar>`, checked.
    pub fn import_image(&self, namespace: &str, tar: &Path) -> Result<()> {
        let out = self.ctr_in(namespace, &["images", "import", &tar.to_string_lossy()])?;
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
        self.ctr_in(NAMESPACE, args)
    }

    /// Runs `ctr` against this containerd in `namespace` (CRI's is `k8s.io`).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Result<Output> {
        Command::new(self.dist.ctr())
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
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

    /// `ctr run -d --runtime io.containerd.kata.v2 [extra] IMAGE ID CMD...`, checked.
    pub fn run_detached(&self, id: &str, extra: &[&str], cmd: &[&str]) -> Result<()> {
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.push(id);
        args.extend_from_slice(cmd);
        let out = self.ctr(&args)?;
        if !out.status.success() {
            bail!(
                "ctr run -d {id}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(())
    }

    /// Runs `ctr` and fails unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            bail!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kills, deletes the task and removes the container; errors ignored.
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let _ = wait_until(Duration::from_secs(10), || {
            self.ctr(&["task", "delete", id])
                .map(|o| o.status.success())
                .unwrap_or(false)
                || self.task_status(id).is_none()
        });
        let _ = self.ctr(&["container", "rm", id]);
    }

    /// The task's status as `ctr task ls` shows it (RUNNING, STOPPED, PAUSED, ...).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]).ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&id))
            .and_then(|cols| cols.get(2).map(|s| (*s).to_owned()))
    }

    /// The shim's ttrpc address for task `id` (from its bundle's `address` file).
    pub fn shim_address(&self, id: &str) -> Result<String> {
        let path = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(NAMESPACE)
            .join(id)
            .join("address");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
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
        // A test that failed half-way leaves tasks: remove them first so
        // their VMs do not outlive the test.
        if let Ok(out) = self.ctr(&["container", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                self.remove(id.trim());
            }
        }
        if self.flavor.is_cri() {
            // Pods a failed test left behind: their VMs outlive containerd otherwise.
            cri::cleanup::remove_everything(self);
        }
        self.stop_daemon();
        // Snapshots under root/, CRI's sandbox /dev/shm mounts under state/.
        let mut mounts = leaks::mounts_under(&format!("{}/", self.dir.display()));
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).output();
        }
        if let Some(bridge) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", bridge]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts containerd with `dir/containerd.toml`, the shim on its PATH and
/// its log appended to `dir/containerd.log`.
fn failpoint_dir(dir: &Path) -> PathBuf {
    dir.join("failpoints")
}

impl Containerd {
    /// Arms the shim's failpoint `phase` (`boot`, `agent_dial`,
    /// `create_sandbox`, `create_container`): the next pod start holds there
    /// until [`Containerd::disarm`].
    pub fn arm(&self, phase: &str) -> Result<()> {
        let dir = failpoint_dir(&self.dir);
        std::fs::create_dir_all(&dir)?;
        let _ = std::fs::remove_file(dir.join(format!("{phase}.reached")));
        std::fs::write(dir.join(phase), "")?;
        Ok(())
    }

    /// Waits until a shim holds at the armed `phase`; returns its sandbox id.
    pub fn held_at(&self, phase: &str, timeout: Duration) -> Result<String> {
        let reached = failpoint_dir(&self.dir).join(format!("{phase}.reached"));
        wait_until(timeout, || reached.exists())
            .with_context(|| format!("no shim reached failpoint {phase}"))?;
        Ok(std::fs::read_to_string(reached)?)
    }

    /// Lets a shim held at `phase` go on.
    pub fn disarm(&self, phase: &str) {
        let _ = std::fs::remove_file(failpoint_dir(&self.dir).join(phase));
    }
}

fn spawn_containerd(dist: &Dist, dir: &Path, kata_config: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))?;
    // The release's own binaries (containerd 2.3's containerd-shim-runc-v2)
    // before the system's.
    let release_dir = dist
        .bin_dir
        .as_ref()
        .map(|d| format!("{}:", d.display()))
        .unwrap_or_default();
    let path = format!(
        "{}:{release_dir}{}",
        shim_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(dist.containerd())
        .arg("--config")
        .arg(dir.join("containerd.toml"))
        .env("PATH", path)
        .env("KATA_CONF_FILE", kata_config)
        // Test failpoints (shim's `failpoint`): armed by `Containerd::arm`.
        .env("KATA_SHIM_FAILPOINTS", failpoint_dir(dir))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} ({})",
                dist.release.name(),
                dist.containerd().display()
            )
        })
}

impl Containerd {
    /// Stops containerd (SIGTERM: it leaves shims and their pods running)
    /// and starts it again on the same configuration, root and state, as
    /// an upgrade or a crash-restart would.
    pub fn restart(&mut self) -> Result<()> {
        self.stop_daemon();
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn_containerd(&self.dist, &self.dir, &self.config)?;
        wait_until(Duration::from_secs(20), || self.socket.exists())
            .with_context(|| format!("containerd socket did not reappear\n{}", self.log()))?;
        // Serving only once its plugins (CRI's recovery included) are up.
        wait_until(Duration::from_secs(30), || {
            self.ctr(&["version"])
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .context("restarted containerd does not answer")?;
        Ok(())
    }

    /// containerd's own pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop_daemon(&mut self) {
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

/// `ctr events` running in the background, its output kept in a file.
pub struct Events {
    child: Child,
    path: PathBuf,
}

impl Containerd {
    pub fn events(&self) -> Result<Events> {
        let path = self.dir.join(format!(
            "events-{}.log",
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let file = std::fs::File::create(&path)?;
        // Events of every namespace: `ctr events` is not namespaced.
        let child = Command::new(self.dist.ctr())
            .arg("--address")
            .arg(&self.socket)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Events { child, path })
    }
}

impl Events {
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Waits until a line has `topic` and mentions `id`.
    pub fn wait_for(&self, topic: &str, id: &str, timeout: Duration) -> Result<()> {
        wait_until(timeout, || {
            self.text()
                .lines()
                .any(|l| l.contains(topic) && l.contains(id))
        })
        .with_context(|| format!("no {topic} event for {id}; saw:\n{}", self.text()))
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
