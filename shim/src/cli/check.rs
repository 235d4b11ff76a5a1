//! `containerd-shim-kata-v2 check`: can this host run pods, and how?
//!
//! Every line is one [`Finding`] with a [`Verdict`]; the command exits 1 when
//! any line is `FAIL` (pods cannot start), else 0 (`WARN` lines work but cost
//! something, e.g. TCG instead of KVM). The decisions are the hypervisor
//! crate's own ([`hypervisor::accel`], the QEMU command line of
//! [`hypervisor::cmdline`]), so `check` says what a sandbox would really get.
//! What the host has comes through the [`Host`] trait, faked in tests.

use std::path::{Path, PathBuf};

use hypervisor::accel::{self, HostProbe, ResolvedAccel, ResolvedVsock};
use hypervisor::cmdline::{vsock::VsockDevice, CommandLine, Transport};
use hypervisor::SharedFsKind;
use serde::Serialize;

use crate::config::Config;

/// How one line of the report came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Works.
    Ok,
    /// Works, with a cost or a limit the operator should know about.
    Warn,
    /// Pods cannot start until this is fixed.
    Fail,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "[ OK ]",
            Verdict::Warn => "[WARN]",
            Verdict::Fail => "[FAIL]",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The configuration file checked (if one was found).
    pub config: Option<PathBuf>,
    pub findings: Vec<Finding>,
    /// Seconds from launch to a sandbox the agent answers in (`--boot`).
    pub boot_seconds: Option<f64>,
    /// The id of `--boot`'s test sandbox (its directory is named after it).
    pub boot_sandbox: Option<String>,
    /// Whether this host can run pods: no `FAIL` line.
    pub can_run_pods: bool,
}

impl Report {
    pub fn new(config: Option<PathBuf>, findings: Vec<Finding>) -> Report {
        let mut r = Report {
            config,
            findings,
            boot_seconds: None,
            boot_sandbox: None,
            can_run_pods: true,
        };
        r.settle();
        r
    }

    /// Recomputes the verdict after findings were added.
    pub fn settle(&mut self) {
        self.can_run_pods = self.findings.iter().all(|f| f.verdict != Verdict::Fail);
    }

    /// The process exit code: 0 when pods can run, 1 when not.
    pub fn exit_code(&self) -> i32 {
        if self.can_run_pods {
            0
        } else {
            1
        }
    }

    pub fn verdict(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }

    /// Human output: one line per check, then the overall verdict.
    pub fn human(&self) -> String {
        let mut out = String::new();
        if let Some(c) = &self.config {
            out.push_str(&format!("configuration: {}\n", c.display()));
        }
        for f in &self.findings {
            out.push_str(&format!(
                "{} {:<20} {}\n",
                f.verdict.label(),
                f.check,
                f.detail
            ));
        }
        if let Some(s) = self.boot_seconds {
            out.push_str(&format!("boot: sandbox ready in {s:.2} s\n"));
        }
        let count = |v| self.findings.iter().filter(|f| f.verdict == v).count();
        if self.can_run_pods {
            out.push_str(&format!(
                "verdict: this host can run pods ({} warning(s))\n",
                count(Verdict::Warn)
            ));
        } else {
            out.push_str(&format!(
                "verdict: this host cannot run pods ({} failure(s))\n",
                count(Verdict::Fail)
            ));
        }
        out
    }
}

/// What `check` asks of the host. [`RealHost`] answers from this machine.
pub trait Host {
    /// The files the accelerator and vsock decisions look at.
    fn probe(&self) -> HostProbe;
    /// A regular file we may read.
    fn is_file(&self, path: &Path) -> bool;
    /// A file we may execute.
    fn is_executable(&self, path: &Path) -> bool;
    /// Runs `program args` and returns its stdout (stderr when stdout is
    /// empty), or why it failed.
    fn output(&self, program: &Path, args: &[&str]) -> Result<String, String>;
    /// The whole text of a file, if readable.
    fn read(&self, path: &Path) -> Option<String>;
    /// `name` on `$PATH`.
    fn which(&self, name: &str) -> Option<PathBuf>;
}

/// This machine.
pub struct RealHost;

impl Host for RealHost {
    fn probe(&self) -> HostProbe {
        HostProbe::default()
    }
    fn is_file(&self, path: &Path) -> bool {
        std::fs::File::open(path).is_ok_and(|f| f.metadata().is_ok_and(|m| m.is_file()))
    }
    fn is_executable(&self, path: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    fn output(&self, program: &Path, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", program.display()))?;
        let text = if out.stdout.is_empty() {
            String::from_utf8_lossy(&out.stderr).into_owned()
        } else {
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "{} {}: {}: {}",
                program.display(),
                args.join(" "),
                out.status,
                text.lines().next().unwrap_or("")
            ))
        }
    }
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
    fn which(&self, name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| self.is_executable(p))
    }
}

/// Directories CNI plugins are looked for in (containerd's default, Debian's).
pub const CNI_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];
/// The plugins the documented CRI setup uses.
pub const CNI_PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
/// containerd's configuration files, 2.x/1.x default location.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

fn finding(check: &'static str, verdict: Verdict, detail: impl Into<String>) -> Finding {
    Finding {
        check,
        verdict,
        detail: detail.into(),
    }
}

/// The first line of `program --version`, or why there is none.
fn version(host: &dyn Host, program: &Path) -> Result<String, String> {
    host.output(program, &["--version"])
        .map(|o| o.lines().next().unwrap_or("").trim().to_owned())
}

/// Runs every check but `--boot` against `config` (or the reason there is none).
pub fn run(host: &dyn Host, config: Result<&Config, String>) -> Vec<Finding> {
    let mut out = Vec::new();
    let config = match config {
        Ok(c) => {
            out.push(finding(
                "configuration",
                Verdict::Ok,
                c.source.display().to_string(),
            ));
            Some(c)
        }
        Err(why) => {
            out.push(finding("configuration", Verdict::Fail, why));
            None
        }
    };
    if let Some(c) = config {
        out.extend(vm_checks(host, c));
    }
    out.push(cgroup_mode(host));
    out.push(cni(host));
    out.extend(containerd(host));
    out
}

fn vm_checks(host: &dyn Host, c: &Config) -> Vec<Finding> {
    let q = &c.qemu;
    let probe = host.probe();
    let mut out = Vec::new();
    let accel = match accel::resolve_accel(q.accel, &probe) {
        Ok((ResolvedAccel::Kvm, why)) => {
            out.push(finding("accelerator", Verdict::Ok, format!("KVM: {why}")));
            ResolvedAccel::Kvm
        }
        Ok((ResolvedAccel::Tcg, why)) => {
            out.push(finding(
                "accelerator",
                Verdict::Warn,
                format!("TCG (software emulation, slower boots and CPU): {why}"),
            ));
            ResolvedAccel::Tcg
        }
        Err(e) => {
            out.push(finding("accelerator", Verdict::Fail, e.to_string()));
            ResolvedAccel::Tcg
        }
    };
    let vsock = match accel::resolve_vsock(q.vsock, &probe) {
        Ok(ResolvedVsock::Vhost) => {
            out.push(finding(
                "vsock",
                Verdict::Ok,
                format!(
                    "kernel vhost-vsock ({})",
                    probe.vhost_vsock_device.display()
                ),
            ));
            ResolvedVsock::Vhost
        }
        Ok(ResolvedVsock::VhostUser) => {
            let daemon = &q.vhost_user_vsock_daemon;
            let why = if probe.vhost_vsock_device.exists() {
                "configured".to_owned()
            } else {
                format!("{} does not exist", probe.vhost_vsock_device.display())
            };
            out.push(helper("vsock", host, daemon, || {
                format!("hybrid vsock through vhost-device-vsock ({why})")
            }));
            ResolvedVsock::VhostUser
        }
        Err(e) => {
            out.push(finding("vsock", Verdict::Fail, e.to_string()));
            ResolvedVsock::VhostUser
        }
    };
    out.extend(qemu(host, c, accel, vsock));
    match q.options.shared_fs {
        SharedFsKind::VirtioFs => out.push(helper("virtiofsd", host, &q.virtiofsd, || {
            "virtio-fs daemon".to_owned()
        })),
        SharedFsKind::Virtio9p => out.push(finding(
            "virtiofsd",
            Verdict::Ok,
            "not needed: shared_fs = \"virtio-9p\" (served by QEMU)",
        )),
    }
    for (name, path) in [("guest kernel", &q.kernel), ("guest initrd", &q.initrd)] {
        out.push(if host.is_file(path) {
            finding(name, Verdict::Ok, path.display().to_string())
        } else {
            finding(
                name,
                Verdict::Fail,
                format!(
                    "{} is missing or unreadable (run `make install`, or fix hypervisor.qemu.{})",
                    path.display(),
                    if name == "guest kernel" {
                        "kernel"
                    } else {
                        "initrd"
                    }
                ),
            )
        });
    }
    out
}

/// A helper daemon: present, executable, its version.
fn helper(check: &'static str, host: &dyn Host, path: &Path, what: impl Fn() -> String) -> Finding {
    if !host.is_executable(path) {
        return finding(
            check,
            Verdict::Fail,
            format!(
                "{}: {} is missing or not executable",
                what(),
                path.display()
            ),
        );
    }
    match version(host, path) {
        Ok(v) => finding(
            check,
            Verdict::Ok,
            format!("{}: {} ({v})", what(), path.display()),
        ),
        Err(e) => finding(check, Verdict::Fail, format!("{}: {e}", what())),
    }
}

/// The QEMU binary, and the machine and devices a sandbox's command line
/// (built by the hypervisor crate for this configuration) names.
fn qemu(host: &dyn Host, c: &Config, accel: ResolvedAccel, vsock: ResolvedVsock) -> Vec<Finding> {
    let q = &c.qemu;
    if !host.is_executable(&q.path) {
        return vec![finding(
            "qemu",
            Verdict::Fail,
            format!(
                "{} is missing or not executable (apt-get install qemu-system-x86, or fix hypervisor.qemu.path)",
                q.path.display()
            ),
        )];
    }
    let mut out = vec![match version(host, &q.path) {
        Ok(v) => finding("qemu", Verdict::Ok, format!("{} ({v})", q.path.display())),
        Err(e) => return vec![finding("qemu", Verdict::Fail, e)],
    }];
    let (machine, devices) = needed(c, accel, vsock);
    out.push(match host.output(&q.path, &["-machine", "help"]) {
        Ok(list)
            if list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&machine)) =>
        {
            finding("qemu machine", Verdict::Ok, machine)
        }
        Ok(_) => finding(
            "qemu machine",
            Verdict::Fail,
            format!("{} has no machine {machine:?}", q.path.display()),
        ),
        Err(e) => finding("qemu machine", Verdict::Fail, e),
    });
    out.push(match host.output(&q.path, &["-device", "help"]) {
        Ok(list) => {
            let has = |d: &str| list.contains(&format!("name \"{d}\""));
            let missing: Vec<_> = devices.iter().filter(|d| !has(d)).cloned().collect();
            if missing.is_empty() {
                finding("qemu devices", Verdict::Ok, devices.join(", "))
            } else {
                finding(
                    "qemu devices",
                    Verdict::Fail,
                    format!("{} lacks {}", q.path.display(), missing.join(", ")),
                )
            }
        }
        Err(e) => finding("qemu devices", Verdict::Fail, e),
    });
    out
}

/// The machine type and `-device` names of this configuration's QEMU
/// command line, as the hypervisor crate builds it.
pub fn needed(c: &Config, accel: ResolvedAccel, vsock: ResolvedVsock) -> (String, Vec<String>) {
    let paths = crate::persist::SandboxPaths::new(Path::new("/run/check"), "check");
    let vm = crate::sandbox::vm_config("check", &paths, c);
    let run_dir = paths.vm;
    let dev = match vsock {
        ResolvedVsock::Vhost => VsockDevice::Vhost {
            cid: 3,
            transport: Transport::Pci,
        },
        ResolvedVsock::VhostUser => VsockDevice::VhostUser {
            socket: run_dir.join("vsock"),
            transport: Transport::Pci,
        },
    };
    let args = CommandLine::for_config(&vm, &c.qemu.options, accel, dev).args();
    let mut machine = String::new();
    let mut devices = Vec::new();
    for pair in args.windows(2) {
        let name = pair[1].split(',').next().unwrap_or("").to_owned();
        match pair[0].as_str() {
            "-machine" if machine.is_empty() => machine = name,
            "-device" if !devices.contains(&name) => devices.push(name),
            _ => {}
        }
    }
    (machine, devices)
}

fn cgroup_mode(host: &dyn Host) -> Finding {
    let mode = if host.is_file(Path::new("/sys/fs/cgroup/cgroup.controllers")) {
        "v2 (unified)"
    } else if host.is_file(Path::new("/sys/fs/cgroup/unified/cgroup.controllers")) {
        "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)"
    } else {
        "v1"
    };
    finding(
        "cgroups",
        Verdict::Ok,
        format!("host {mode}; containers get the guest's own cgroups"),
    )
}

fn cni(host: &dyn Host) -> Finding {
    for dir in CNI_DIRS {
        let dir = Path::new(dir);
        if CNI_PLUGINS.iter().all(|p| host.is_executable(&dir.join(p))) {
            return finding(
                "cni plugins",
                Verdict::Ok,
                format!("{} in {}", CNI_PLUGINS.join(", "), dir.display()),
            );
        }
    }
    finding(
        "cni plugins",
        Verdict::Warn,
        format!(
            "{} not found in {}: CRI pods get no network (apt-get install containernetworking-plugins)",
            CNI_PLUGINS.join(", "),
            CNI_DIRS.join(" or ")
        ),
    )
}

fn containerd(host: &dyn Host) -> Vec<Finding> {
    let mut out = Vec::new();
    match host.which("containerd") {
        Some(bin) => out.push(match version(host, &bin) {
            Ok(v) => finding("containerd", Verdict::Ok, v),
            Err(e) => finding("containerd", Verdict::Warn, e),
        }),
        None => out.push(finding(
            "containerd",
            Verdict::Warn,
            "containerd is not on PATH",
        )),
    }
    out.push(match host.which("containerd-shim-kata-v2") {
        Some(p) => finding("shim on PATH", Verdict::Ok, p.display().to_string()),
        None => finding(
            "shim on PATH",
            Verdict::Warn,
            "containerd-shim-kata-v2 is not on PATH: containerd will not find runtime io.containerd.kata.v2 (make install)",
        ),
    });
    let conf = Path::new(CONTAINERD_CONFIG);
    out.push(match host.read(conf) {
        Some(text) if text.contains("io.containerd.kata.v2") => finding(
            "containerd config",
            Verdict::Ok,
            format!(
                "{} names runtime_type io.containerd.kata.v2{}",
                conf.display(),
                config_path_of(&text)
                    .map(|p| format!(" (ConfigPath {p})"))
                    .unwrap_or_default()
            ),
        ),
        Some(_) => finding(
            "containerd config",
            Verdict::Warn,
            format!(
                "{} has no runtime io.containerd.kata.v2: CRI cannot use it (ctr --runtime still can); see docs/containerd.md",
                conf.display()
            ),
        ),
        None => finding(
            "containerd config",
            Verdict::Warn,
            format!("{} is not readable", conf.display()),
        ),
    });
    out
}

/// The `ConfigPath` runtime option of the kata runtime in a containerd config.
fn config_path_of(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("ConfigPath"))
        .filter_map(|l| l.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .next()
}
