//! The helper daemons QEMU's vhost-user devices talk to: `virtiofsd` (shared
//! file system) and `vhost-device-vsock` (hybrid vsock).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use crate::console::{spawn_reader, Ring, Source};
use crate::process::Supervised;
use crate::{Error, Result, VmConfig};

pub const VIRTIOFSD_SOCKET: &str = "virtiofsd.sock";
pub const VHOST_USER_VSOCK_SOCKET: &str = "vhost-vsock.sock";
/// The VM's hybrid-vsock socket: served by [`crate::vsock_gate`].
pub const HYBRID_VSOCK_SOCKET: &str = "vsock.sock";
/// vhost-device-vsock's own hybrid-vsock socket, reached only through the gate.
pub const HYBRID_VSOCK_BACKEND_SOCKET: &str = "vsock-vdv.sock";
/// The CID vhost-device-vsock gives the guest (the guest never needs to know it).
pub const VHOST_USER_GUEST_CID: u32 = 3;

/// How to start one helper and which socket says it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperSpec {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Appears once the helper listens.
    pub ready_socket: PathBuf,
}

pub fn virtiofsd(config: &VmConfig, options: &crate::VmOptions) -> HelperSpec {
    let socket = config.run_dir.join(VIRTIOFSD_SOCKET);
    let mut args: Vec<String> = vec![
        "--socket-path".into(),
        socket.to_string_lossy().into_owned(),
        "--shared-dir".into(),
        config.shared_dir.to_string_lossy().into_owned(),
        // Its own mount namespace rooted at the export: a path the guest
        // names can reach nothing outside it. Container mounts made later
        // propagate in (the export is a slave of the shim's mount tree).
        "--sandbox".into(),
        "namespace".into(),
        "--cache".into(),
        options.virtio_fs_cache.as_arg().into(),
    ];
    args.extend(options.virtio_fs_extra_args.iter().cloned());
    HelperSpec {
        name: "virtiofsd",
        program: config.virtiofsd_path.clone(),
        args,
        ready_socket: socket,
    }
}

pub fn vhost_device_vsock(config: &VmConfig) -> HelperSpec {
    let socket = config.run_dir.join(VHOST_USER_VSOCK_SOCKET);
    HelperSpec {
        name: "vhost-device-vsock",
        program: config.vhost_device_vsock_path.clone(),
        args: vec![
            "--guest-cid".into(),
            VHOST_USER_GUEST_CID.to_string(),
            "--socket".into(),
            socket.to_string_lossy().into_owned(),
            "--uds-path".into(),
            config
                .run_dir
                .join(HYBRID_VSOCK_BACKEND_SOCKET)
                .to_string_lossy()
                .into_owned(),
        ],
        ready_socket: socket,
    }
}

/// Spawns a process with stdin closed and its output logged into `ring`. It is
/// put in its own process group so a terminal's signals do not reach it. It
/// gets SIGKILL when the thread that spawned it ends (a runtime worker: in
/// practice, the shim daemon), so a killed shim leaves no VM running; cleanup
/// is otherwise explicit (stop / cleanup_run_dir). It inherits no descriptor
/// but its stdio: everything else the shim opens is close-on-exec.
/// With `netns`, the process starts inside that network namespace.
pub fn spawn(
    name: &'static str,
    program: &Path,
    args: &[String],
    sandbox: &str,
    ring: &Ring,
    netns: Option<&Path>,
) -> Result<(Supervised, Option<tokio::process::ChildStdout>)> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let ns = match netns {
        Some(path) => Some(std::fs::File::open(path).map_err(|e| Error::Io {
            what: format!("opening network namespace {}", path.display()),
            source: e,
        })?),
        None => None,
    };
    // SAFETY: between fork and exec only prctl(2) and setns(2) run, both
    // async-signal-safe; `ns` is moved in and outlives the call.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(ns) = &ns {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    tracing::debug!(sandbox, process = name, program = %program.display(), ?args, "spawning");
    let mut child = cmd.spawn().map_err(|e| Error::Io {
        what: format!("spawning {name} ({})", program.display()),
        source: e,
    })?;
    let stdout = child.stdout.take();
    if let Some(stderr) = child.stderr.take() {
        spawn_reader(
            stderr,
            ring.clone(),
            sandbox.to_string(),
            Source::Diagnostics(name),
        );
    }
    let sup = Supervised::new(name, child, sandbox.to_string());
    tracing::info!(sandbox, process = name, pid = sup.pid, "started");
    Ok((sup, stdout))
}

/// Spawns a helper; its stdout is logged like its stderr.
pub fn spawn_helper(spec: &HelperSpec, sandbox: &str, ring: &Ring) -> Result<Supervised> {
    let (sup, stdout) = spawn(spec.name, &spec.program, &spec.args, sandbox, ring, None)?;
    if let Some(out) = stdout {
        spawn_reader(
            out,
            ring.clone(),
            sandbox.to_string(),
            Source::Diagnostics(spec.name),
        );
    }
    Ok(sup)
}

/// Waits until `socket` exists, failing early if `proc` exits.
pub async fn wait_for_socket(
    socket: &Path,
    proc: &Supervised,
    deadline: Instant,
    timeout: Duration,
    ring: &Ring,
) -> Result<()> {
    loop {
        if tokio::fs::try_exists(socket).await.unwrap_or(false) {
            return Ok(());
        }
        if proc.has_exited() {
            // Let the output readers catch up before reporting.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(Error::ProcessExited {
                what: proc.wait().await,
                output: ring.tail(),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::StartTimeout {
                what: format!("{} (socket {})", proc.name, socket.display()),
                timeout,
                console: ring.tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_command_lines() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut c = crate::config::tests::valid_config(d.path());
        c.run_dir = PathBuf::from("/run/vc/sb1");
        c.shared_dir = PathBuf::from("/run/shared/sb1");
        let fs = virtiofsd(&c, &crate::VmOptions::default());
        assert_eq!(
            fs.args.join(" "),
            "--socket-path /run/vc/sb1/virtiofsd.sock --shared-dir /run/shared/sb1 --sandbox namespace --cache auto"
        );
        assert_eq!(fs.ready_socket, PathBuf::from("/run/vc/sb1/virtiofsd.sock"));
        let tuned = crate::VmOptions {
            virtio_fs_cache: crate::VirtioFsCache::Never,
            virtio_fs_extra_args: vec!["--thread-pool-size=2".into()],
            ..crate::VmOptions::default()
        };
        assert!(virtiofsd(&c, &tuned)
            .args
            .join(" ")
            .ends_with("--cache never --thread-pool-size=2"));
        let vs = vhost_device_vsock(&c);
        assert_eq!(
            vs.args.join(" "),
            "--guest-cid 3 --socket /run/vc/sb1/vhost-vsock.sock --uds-path /run/vc/sb1/vsock-vdv.sock"
        );
    }

    #[tokio::test]
    async fn early_exit_and_timeout_are_reported() {
        let d = tempfile::tempdir().expect("tempdir");
        let ring = Ring::default();
        let args = vec!["-c".to_string(), "echo failing >&2; exit 3".to_string()];
        let (p, _) = spawn("sh", Path::new("/bin/sh"), &args, "sb", &ring, None).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(5);
        let e = wait_for_socket(
            &d.path().join("never"),
            &p,
            deadline,
            Duration::from_secs(5),
            &ring,
        )
        .await
        .expect_err("exited");
        let msg = e.to_string();
        assert!(
            msg.contains("exit status: 3") && msg.contains("[sh] failing"),
            "{msg}"
        );

        // A wrapper with a child of its own: killing it kills the child too.
        let args = vec!["-c".to_string(), "sleep 30; true".to_string()];
        let (p, _) = spawn("sh", Path::new("/bin/sh"), &args, "sb", &ring, None).expect("spawn");
        let deadline = Instant::now() + Duration::from_millis(100);
        let e = wait_for_socket(
            &d.path().join("never"),
            &p,
            deadline,
            Duration::from_millis(100),
            &ring,
        )
        .await
        .expect_err("timeout");
        assert!(matches!(e, Error::StartTimeout { .. }), "{e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", p.pid, p.pid))
            .expect("children");
        let sleep_pid: u32 = children.trim().parse().expect("one child");
        p.kill_and_wait().await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while crate::process::proc_start_time(sleep_pid).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            crate::process::proc_start_time(sleep_pid).is_none(),
            "grandchild survived"
        );
    }
}
