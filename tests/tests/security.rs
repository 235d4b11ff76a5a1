//! The host holds against a hostile guest (issue: untrusted guest). Real
//! containerd, shim, QEMU and guest: a privileged container with
//! CAP_SYS_ADMIN attacks the virtio-fs share, read-only mounts are tried
//! for writes, the share is probed as another host user, descriptors of
//! QEMU and the helpers are inspected, and a frozen VM is torn down.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use containerd_shim_kata_v2::persist::SandboxPaths;
use integration_tests::{assert_no_leftovers, leaks, require_vm, text, wait_until, Containerd};

fn sandbox_paths(id: &str) -> SandboxPaths {
    SandboxPaths::new(Path::new(leaks::RUN_ROOT), id)
}

/// Host mounts that are not below the sandbox run root, for comparison
/// before and after an attack. Mounts other tests' containerds and pod
/// network namespaces make meanwhile (on a shared developer machine) are
/// not counted.
fn mounts_outside_run_root() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| {
            !mp.starts_with(leaks::RUN_ROOT)
                && !mp.starts_with("/var/lib/kata-shim-test/")
                && !mp.starts_with("/run/netns/")
                && !mp.starts_with("/run/containerd/")
        })
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// What a container with CAP_SYS_ADMIN does to the share: mounts the
/// virtio-fs tag itself and tries to plant links and entries where the
/// shim mounts, and to write through every read-only mount. Each line
/// `BREACH ...` is an attack that worked.
const ATTACK: &str = r#"
mkdir -p /share && mount -t virtiofs kataShared /share || { echo NOMOUNT; exit 90; }
if [ -d /share/attacker/rootfs ]; then
  c=attacker
  ln -s /var/lib /share/planted 2>/dev/null && echo BREACH top-level link
  mkdir /share/next 2>/dev/null && echo BREACH top-level mkdir
  ln -s / "/share/$c/mounts/9-next" 2>/dev/null && echo BREACH link in container dir
  mkdir "/share/$c/evil" 2>/dev/null && echo BREACH mkdir in container dir
  for m in /share/$c/mounts/*; do
    [ -d "$m" ] && { echo guest > "$m/written" 2>/dev/null && echo BREACH write via share of ro bind; }
  done
else
  # The guest kernel hands a container the newest virtio-fs superblock
  # (one of the submounts), never the share's top: nothing to plant in.
  echo share-top-unreachable
fi
echo guest > /ro/written 2>/dev/null && echo BREACH write via ro bind
echo guest > /rw/written || echo FAIL rw bind not writable
echo attack-done
"#;

#[test]
fn a_privileged_container_cannot_steer_or_write_host_mounts() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let host = ctd.dir.join("host-data");
    let (ro, rw) = (host.join("ro"), host.join("rw"));
    std::fs::create_dir_all(&ro)?;
    std::fs::create_dir_all(&rw)?;
    std::fs::write(ro.join("keep"), b"host")?;
    let before = mounts_outside_run_root();
    let ro_mount = format!("type=bind,src={},dst=/ro,options=rbind:ro", ro.display());
    let rw_mount = format!("type=bind,src={},dst=/rw,options=rbind:rw", rw.display());
    let out = ctd.run(
        "attacker",
        &["--privileged", "--mount", &ro_mount, "--mount", &rw_mount],
        &["sh", "-c", ATTACK],
    )?;
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("attack-done"),
        "the attack did not run: {stdout}\n{}",
        text(&out.stderr)
    );
    assert!(!stdout.contains("BREACH"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert_eq!(std::fs::read(ro.join("keep"))?, b"host");
    assert!(!ro.join("written").exists(), "a ro bind was written");
    assert_eq!(
        std::fs::read(rw.join("written"))?,
        b"guest\n",
        "rw binds work"
    );
    assert_eq!(mounts_outside_run_root(), before, "no host mount appeared");
    assert_no_leftovers(ctd);
    Ok(())
}

#[test]
fn a_read_only_rootfs_cannot_be_written_through_the_share() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let script = r#"
mkdir -p /tmp/share 2>/dev/null || true
echo x > /etc/written 2>/dev/null && echo BREACH rootfs
mount -t tmpfs t /tmp 2>/dev/null; mkdir -p /tmp/share
mount -t virtiofs kataShared /tmp/share || { echo NOMOUNT; exit 90; }
c=$(ls /tmp/share | head -n 1)
echo x > "/tmp/share/$c/rootfs/etc/written" 2>/dev/null && echo BREACH rootfs via share
echo done
"#;
    let out = ctd.run(
        "rorootfs",
        &["--privileged", "--read-only"],
        &["sh", "-c", script],
    )?;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("done"), "{stdout}\n{}", text(&out.stderr));
    assert!(!stdout.contains("BREACH"), "{stdout}");
    assert_no_leftovers(ctd);
    Ok(())
}

/// The socket inodes a process holds (`socket:[N]` links in /proc/PID/fd).
fn socket_inodes(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("socket:"))
        .collect()
}

#[test]
fn the_share_is_private_and_children_hold_no_shim_sockets() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    ctd.run_detached("private", &[], &["sleep", "300"])?;
    let paths = sandbox_paths("private");
    let result = (|| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for d in [
            Path::new(leaks::RUN_ROOT),
            &paths.base,
            &paths.shared,
            &paths.vm,
        ] {
            let mode = std::fs::metadata(d)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        // Every socket and file the shim put in the sandbox's directory
        // (state file, metrics socket) is root's alone. The helpers' own
        // sockets in vm/ keep their umask's mode and rely on the 0700
        // directories above.
        for dir in [&paths.base] {
            for e in std::fs::read_dir(dir)?.flatten() {
                let meta = e.metadata()?;
                if meta.is_dir() {
                    continue;
                }
                let mode = meta.permissions().mode() & 0o077;
                assert_eq!(
                    mode,
                    0,
                    "{} is open to others: {:o}",
                    e.path().display(),
                    meta.permissions().mode()
                );
            }
        }
        // Another host user can neither list nor read the export.
        for target in [&paths.shared, &paths.base] {
            let st = Command::new("ls")
                .arg(target)
                .uid(65534)
                .gid(65534)
                .output()?;
            assert!(
                !st.status.success(),
                "nobody listed {}: {}",
                target.display(),
                text(&st.stdout)
            );
        }
        // The shim daemon's sockets (its Task API listener included) are in
        // none of QEMU's or the helpers' descriptor tables.
        let shim = leaks::processes_mentioning("containerd-shim-kata-v2")
            .into_iter()
            .find(|(_, cmd)| {
                cmd.contains(&ctd.dir.to_string_lossy().to_string()) || cmd.contains("-id private")
            })
            .context("shim daemon")?;
        let shim_sockets = socket_inodes(shim.0);
        assert!(!shim_sockets.is_empty(), "the shim serves sockets");
        let children = leaks::processes_mentioning(&paths.base.to_string_lossy());
        assert!(children.len() >= 2, "QEMU and helpers: {children:?}");
        for (pid, cmd) in children {
            let theirs = socket_inodes(pid);
            let shared: Vec<&String> = theirs.iter().filter(|s| shim_sockets.contains(s)).collect();
            assert!(shared.is_empty(), "{cmd} holds shim sockets {shared:?}");
        }
        Ok(())
    })();
    ctd.remove("private");
    result?;
    assert_no_leftovers(ctd);
    Ok(())
}

/// `kill -STOP` of QEMU (a frozen guest that answers nothing): containerd's
/// kill and delete still finish, and nothing is left.
#[test]
fn a_frozen_vm_is_torn_down_from_the_host() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    ctd.run_detached("frozen", &[], &["sleep", "300"])?;
    let paths = sandbox_paths("frozen");
    let qemu = leaks::processes_mentioning(&paths.base.to_string_lossy())
        .into_iter()
        .find(|(_, cmd)| cmd.contains("qemu-system"))
        .context("QEMU")?;
    // SAFETY: kill(2) with a live pid we just found and a valid signal.
    if unsafe { libc::kill(i32::try_from(qemu.0)?, libc::SIGSTOP) } != 0 {
        bail!("SIGSTOP: {}", std::io::Error::last_os_error());
    }
    let t = Instant::now();
    let out = ctd.ctr(&["task", "kill", "-s", "SIGKILL", "frozen"])?;
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    wait_until(Duration::from_secs(30), || {
        ctd.task_status("frozen").as_deref() == Some("STOPPED")
    })
    .context("the task never stopped")?;
    let out = ctd.ctr(&["task", "delete", "frozen"])?;
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    let took = t.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}");
    ctd.ctr_ok(&["container", "rm", "frozen"])?;
    assert_no_leftovers(ctd);
    Ok(())
}

/// The fault matrix while a container streams output: `kill -9` of QEMU,
/// virtiofsd or vhost-device-vsock ends the pod with its exit reported,
/// and nothing of it is left (processes, mounts, directories).
#[test]
fn a_killed_vmm_or_helper_mid_stream_reports_the_exit_and_leaves_nothing() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let events = ctd.events()?;
    let mut failures = Vec::new();
    for victim in ["virtiofsd", "vhost-device-vsock", "qemu-system"] {
        let id = format!("fault-{}", victim.replace('-', ""));
        ctd.run_detached(&id, &[], &["sh", "-c", "while true; do echo spam; done"])?;
        let base = sandbox_paths(&id).base;
        let Some((pid, _)) = leaks::processes_mentioning(&base.to_string_lossy())
            .into_iter()
            .find(|(_, cmd)| cmd.contains(victim))
        else {
            if victim == "vhost-device-vsock" && std::path::Path::new("/dev/vhost-vsock").exists() {
                ctd.remove(&id);
                continue; // kernel vsock: no such helper
            }
            bail!("no {victim} process for {id}");
        };
        std::thread::sleep(Duration::from_millis(300)); // streaming
                                                        // SAFETY: kill(2) of a process of this test's own VM.
        unsafe { libc::kill(i32::try_from(pid)?, libc::SIGKILL) };
        if let Err(e) = events.wait_for("/tasks/exit", &id, Duration::from_secs(15)) {
            failures.push(format!("{victim}: no exit: {e:#}"));
        }
        if wait_until(Duration::from_secs(10), || {
            leaks::processes_mentioning(&base.to_string_lossy()).is_empty()
        })
        .is_err()
        {
            failures.push(format!("{victim}: processes left"));
        }
        ctd.remove(&id);
    }
    drop(events);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_no_leftovers(ctd);
    Ok(())
}

/// Odd but valid input: bind sources named with a space, a tab and a
/// backslash, a hundred binds, a thousand environment variables. All of it
/// reaches the container and is cleaned up after.
#[test]
fn odd_but_valid_input_is_handled_and_cleaned_up() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let host = ctd.dir.join("odd");
    let mut extra: Vec<String> = Vec::new();
    // (A newline cannot pass through ctr's --mount; the share's unit tests
    // cover it.)
    for (i, name) in ["with space", "tab\there", "back\\slash"]
        .iter()
        .enumerate()
    {
        let src = host.join(name);
        std::fs::create_dir_all(&src)?;
        std::fs::write(src.join("f"), format!("odd{i}"))?;
        extra.push("--mount".into());
        extra.push(format!(
            "type=bind,src={},dst=/odd{i},options=rbind:ro",
            src.display()
        ));
    }
    for i in 0..100 {
        let src = host.join(format!("many-{i}"));
        std::fs::create_dir_all(&src)?;
        extra.push("--mount".into());
        extra.push(format!(
            "type=bind,src={},dst=/many/{i},options=rbind:ro",
            src.display()
        ));
    }
    for i in 0..1000 {
        extra.push("--env".into());
        extra.push(format!("VAR_{i}={}", "v".repeat(20)));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let out = ctd.run(
        "odd",
        &extra,
        &[
            "sh",
            "-c",
            "cat /odd0/f /odd1/f /odd2/f; echo; ls /many | wc -l; env | grep -c ^VAR_",
        ],
    )?;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, vec!["odd0odd1odd2", "100", "1000"], "{stdout}");
    assert_no_leftovers(ctd);
    Ok(())
}

/// The attack during another container's Create: the pod's privileged
/// container keeps planting links and directories where the next
/// container's rootfs and volume would be mounted, before and while it is
/// created. The new container still gets its own volume, no host mount
/// appears anywhere else, and no plant ever succeeds.
#[test]
fn planting_during_another_containers_create_changes_nothing_on_the_host() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let volume = ctd.dir.join("volume");
    std::fs::create_dir_all(&volume)?;
    std::fs::write(volume.join("data"), b"volume")?;
    let before = mounts_outside_run_root();
    let planter = r#"
mkdir -p /share && mount -t virtiofs kataShared /share || exit 90
: > /breaches
# Only the share's top is worth planting in (see ATTACK).
[ -d /share/pod/rootfs ] || exec sleep 300
while true; do
  for n in app planted; do
    ln -s /var/lib "/share/$n" 2>/dev/null && echo "link /share/$n" >> /breaches
    mkdir -p "/share/$n/mounts" 2>/dev/null && echo "mkdir /share/$n" >> /breaches
    ln -s / "/share/$n/mounts/0-volume" 2>/dev/null && echo "link in $n" >> /breaches
    ln -s / "/share/$n/rootfs" 2>/dev/null && echo "rootfs link $n" >> /breaches
  done
done
"#;
    let pod = [
        "--privileged",
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod",
    ];
    ctd.run_detached("pod", &pod, &["sh", "-c", planter])?;
    std::thread::sleep(Duration::from_millis(500)); // planting before the create
    let vol = format!(
        "type=bind,src={},dst=/volume,options=rbind:rw",
        volume.display()
    );
    let app = [
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        "--annotation",
        "io.kubernetes.cri.sandbox-id=pod",
        "--mount",
        vol.as_str(),
    ];
    let result = (|| -> Result<()> {
        ctd.run_detached("app", &app, &["sleep", "300"])?;
        let seen = ctd.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            "r",
            "app",
            "cat",
            "/volume/data",
        ])?;
        assert_eq!(seen, "volume", "the app got its own volume");
        let breaches =
            ctd.ctr_ok(&["task", "exec", "--exec-id", "b", "pod", "cat", "/breaches"])?;
        assert!(breaches.is_empty(), "plants succeeded: {breaches}");
        assert_eq!(mounts_outside_run_root(), before, "no host mount appeared");
        Ok(())
    })();
    ctd.remove("app");
    ctd.remove("pod");
    result?;
    assert_eq!(mounts_outside_run_root(), before);
    assert_no_leftovers(ctd);
    Ok(())
}
