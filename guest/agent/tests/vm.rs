//! Boots the guest image (kernel + initrd with our agent as PID 1) in QEMU and
//! drives a container's whole life through the agent API over hybrid vsock.
//!
//! Needs root, QEMU, vhost-device-vsock, virtiofsd, busybox and the image:
//! `make image && KATA_GUEST_IMAGE_DIR=build/guest cargo test -p kata-agent --test vm`.
//! Without KATA_GUEST_IMAGE_DIR the test does nothing (so `cargo test` stays
//! green), unless `KATA_REQUIRE_VM=1` (CI): then it fails.
mod common;
mod pod;
mod resources;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;
use protocols::agent::*;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use protocols::health_ttrpc::HealthClient;
use protocols::oci;

async fn scenario(vm: &Vm, t0: Instant) -> Result<()> {
    let stream = vm.dial(Duration::from_secs(60))?;
    let socket = ttrpc::r#async::transport::Socket::try_from(stream)?;
    let client = ttrpc::r#async::Client::new(socket);
    let health = HealthClient::new(client.clone());
    let agent = AgentServiceClient::new(client);
    let resp = health.check(ctx(), &CheckRequest::default()).await?;
    assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));
    eprintln!("agent ready {:.2?} after QEMU launch", t0.elapsed());
    let v = health.version(ctx(), &CheckRequest::default()).await?;
    assert!(!v.agent_version.is_empty());

    let req = CreateSandboxRequest {
        hostname: "sandbox".into(),
        // A pod pid namespace held by the agent (pod::scenario joins it).
        sandbox_pidns: true,
        ..agent_client::testing::shared_fs_sandbox("sb1")
    };
    agent.create_sandbox(ctx(), &req).await?;

    // A container that prints on both streams and exits 7.
    let cid = "c1";
    make_rootfs(&vm.shared(), cid)?;
    let script = "echo out; echo err >&2; hostname; exit 7";
    agent
        .create_container(
            ctx(),
            &create_req(cid, container_spec(cid, &["sh", "-c", script])),
        )
        .await?;
    let dup = agent
        .create_container(ctx(), &create_req(cid, container_spec(cid, &["true"])))
        .await;
    assert_eq!(
        dup.as_ref().err().and_then(code),
        Some(ttrpc::Code::ALREADY_EXISTS),
        "{dup:?}"
    );
    let mut bad = container_spec("c2", &["true"]);
    if let Some(p) = bad.Process.as_mut() {
        p.Cwd = "relative".into();
    }
    let r = agent.create_container(ctx(), &create_req("c2", bad)).await;
    assert_eq!(
        r.as_ref().err().and_then(code),
        Some(ttrpc::Code::INVALID_ARGUMENT),
        "{r:?}"
    );
    let r = wait(&agent, "nope", "").await;
    let r = r
        .err()
        .and_then(|e| e.downcast_ref::<ttrpc::Error>().and_then(code));
    assert_eq!(r, Some(ttrpc::Code::NOT_FOUND));

    let t = Instant::now();
    agent
        .start_container(
            ctx(),
            &StartContainerRequest {
                container_id: cid.into(),
                ..Default::default()
            },
        )
        .await?;
    let again = agent
        .start_container(
            ctx(),
            &StartContainerRequest {
                container_id: cid.into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        again.as_ref().err().and_then(code),
        Some(ttrpc::Code::FAILED_PRECONDITION),
        "{again:?}"
    );
    let (out, err) =
        tokio::try_join!(drain(&agent, cid, "", false), drain(&agent, cid, cid, true))?;
    assert_eq!(out, "out\ntesthost\n");
    assert_eq!(err, "err\n");
    assert_eq!(wait(&agent, cid, "").await?, 7);
    eprintln!("container start to exit + output: {:.2?}", t.elapsed());
    let rm = RemoveContainerRequest {
        container_id: cid.into(),
        timeout: 10,
        ..Default::default()
    };
    agent.remove_container(ctx(), &rm).await?;

    // A long-running container: exec into it, then kill it.
    let cid = "c3";
    make_rootfs(&vm.shared(), cid)?;
    agent
        .create_container(
            ctx(),
            &create_req(cid, container_spec(cid, &["sleep", "300"])),
        )
        .await?;
    agent
        .start_container(
            ctx(),
            &StartContainerRequest {
                container_id: cid.into(),
                ..Default::default()
            },
        )
        .await?;
    let exec = ExecProcessRequest {
        container_id: cid.into(),
        exec_id: "e1".into(),
        process: Some(oci::Process {
            Args: vec![
                "sh".into(),
                "-c".into(),
                "read x; echo got $x; hostname; echo $$; echo $HOME; exit 3".into(),
            ],
            Env: vec!["PATH=/bin".into()],
            Cwd: "/tmp".into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    agent.exec_process(ctx(), &exec).await?;
    let w = WriteStreamRequest {
        container_id: cid.into(),
        exec_id: "e1".into(),
        data: b"hello\n".to_vec(),
        ..Default::default()
    };
    assert_eq!(agent.write_stdin(ctx(), &w).await?.len, 6);
    agent
        .close_stdin(
            ctx(),
            &CloseStdinRequest {
                container_id: cid.into(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await?;
    let out = drain(&agent, cid, "e1", false).await?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], &["got hello", "testhost"], "{out:?}");
    assert_ne!(
        lines.get(2),
        Some(&"1"),
        "exec is not the container's init: {out:?}"
    );
    assert_eq!(
        lines.get(3),
        Some(&"/root"),
        "HOME from /etc/passwd: {out:?}"
    );
    assert_eq!(wait(&agent, cid, "e1").await?, 3);
    // An exec with a terminal: one stream (stdout), CRLF line ends.
    let mut tty_exec = exec.clone();
    tty_exec.exec_id = "e2".into();
    if let Some(p) = tty_exec.process.as_mut() {
        p.Terminal = true;
        p.ConsoleSize = Some(oci::Box {
            Height: 30,
            Width: 90,
            ..Default::default()
        })
        .into();
        p.Args = vec![
            "sh".into(),
            "-c".into(),
            "[ -t 0 ] && [ -t 1 ] && echo tty; tty; stty size; echo $((6*7))".into(),
        ];
    }
    agent.exec_process(ctx(), &tty_exec).await?;
    let resize = TtyWinResizeRequest {
        container_id: cid.into(),
        exec_id: "e2".into(),
        row: 40,
        column: 100,
        ..Default::default()
    };
    agent.tty_win_resize(ctx(), &resize).await?;
    let (out, err) = tokio::try_join!(
        drain(&agent, cid, "e2", false),
        drain(&agent, cid, "e2", true)
    )?;
    assert_eq!(err, "");
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines.len(), 5, "{out:?}");
    assert_eq!(lines[0], "tty");
    assert!(
        lines[1].starts_with("/dev/pts/"),
        "pty of the container's devpts: {out:?}"
    );
    // ConsoleSize, or the resize if it came first.
    assert!(["30 90", "40 100"].contains(&lines[2]), "{out:?}");
    assert_eq!(&lines[3..], &["42", ""]);
    assert_eq!(wait(&agent, cid, "e2").await?, 0);
    // Waited for and drained: the exec is forgotten.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = wait(&agent, cid, "e2").await;
    let r = r
        .err()
        .and_then(|e| e.downcast_ref::<ttrpc::Error>().and_then(code));
    assert_eq!(r, Some(ttrpc::Code::NOT_FOUND));

    let stats = agent
        .stats_container(
            ctx(),
            &StatsContainerRequest {
                container_id: cid.into(),
                ..Default::default()
            },
        )
        .await?;
    let cg = stats.cgroup_stats.as_ref().context("cgroup stats")?;
    assert_eq!(
        cg.memory_stats.usage.limit,
        64 << 20,
        "memory limit from the spec"
    );
    assert_eq!(cg.pids_stats.limit, 100, "pids limit from the spec");
    assert!(cg.pids_stats.current >= 1);
    let pause = PauseContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    agent.pause_container(ctx(), &pause).await?;
    let resume = ResumeContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    agent.resume_container(ctx(), &resume).await?;
    let list = ListProcessesRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    let list = agent.list_processes(ctx(), &list).await?;
    assert!(list.process_list.starts_with(b"[") && list.process_list.len() > 2);
    let kill = SignalProcessRequest {
        container_id: cid.into(),
        exec_id: String::new(),
        signal: 9,
        ..Default::default()
    };
    agent.signal_process(ctx(), &kill).await?;
    assert_eq!(wait(&agent, cid, cid).await?, 128 + 9);
    let mut late = exec.clone();
    late.exec_id = "e3".into();
    let r = agent.exec_process(ctx(), &late).await;
    assert_eq!(
        r.as_ref().err().and_then(code),
        Some(ttrpc::Code::FAILED_PRECONDITION),
        "{r:?}"
    );
    let unknown = SignalProcessRequest {
        exec_id: "nope".into(),
        ..kill.clone()
    };
    let r = agent.signal_process(ctx(), &unknown).await;
    assert_eq!(
        r.as_ref().err().and_then(code),
        Some(ttrpc::Code::NOT_FOUND),
        "{r:?}"
    );
    let rm = RemoveContainerRequest {
        container_id: cid.into(),
        timeout: 10,
        ..Default::default()
    };
    agent.remove_container(ctx(), &rm).await?;
    let r = wait(&agent, cid, "").await;
    assert!(r.is_err(), "container forgotten after RemoveContainer");
    let r = agent.remove_container(ctx(), &rm).await;
    assert_eq!(
        r.as_ref().err().and_then(code),
        Some(ttrpc::Code::NOT_FOUND),
        "{r:?}"
    );

    // A non-root user, a read-only rootfs, a cgroup namespace.
    let cid = "c4";
    make_rootfs(&vm.shared(), cid)?;
    let script = "id -u; id -G; touch /x 2>/dev/null || echo read-only; \
                  cat /sys/fs/cgroup/memory.max; cat /proc/self/cgroup; \
                  grep -E '^Cap(Bnd|Eff)' /proc/self/status | tr -s '\\t' ' '; ulimit -n; \
                  cat /proc/sys/kernel/msgmax; echo hi > /data/f && cat /data/f; \
                  ls /dev | tr '\\n' ' '";
    let mut spec = container_spec(cid, &["sh", "-c", script]);
    if let Some(p) = spec.Process.as_mut() {
        p.User = Some(oci::User {
            UID: 1000,
            GID: 1000,
            AdditionalGids: vec![10, 20],
            ..Default::default()
        })
        .into();
    }
    if let Some(p) = spec.Process.as_mut() {
        let caps = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        p.Capabilities = Some(oci::LinuxCapabilities {
            Bounding: caps(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
            Effective: caps(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
            Permitted: caps(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
            Inheritable: caps(&["CAP_NET_BIND_SERVICE"]),
            Ambient: caps(&["CAP_NET_BIND_SERVICE"]),
            ..Default::default()
        })
        .into();
        p.Rlimits = vec![oci::POSIXRlimit {
            Type: "RLIMIT_NOFILE".into(),
            Hard: 1024,
            Soft: 512,
            ..Default::default()
        }];
    }
    if let Some(l) = spec.Linux.as_mut() {
        l.Sysctl.insert("kernel.msgmax".into(), "4096".into());
    }
    if let Some(r) = spec.Root.as_mut() {
        r.Readonly = true;
    }
    if let Some(l) = spec.Linux.as_mut() {
        l.Namespaces.push(oci::LinuxNamespace {
            Type: "cgroup".into(),
            ..Default::default()
        });
    }
    // A per-container ephemeral volume, bind-mounted at /data.
    let volume = "/run/kata-containers/sandbox/ephemeral/c4-data";
    spec.Mounts.push(oci::Mount {
        destination: "/data".into(),
        source: volume.into(),
        type_: "bind".into(),
        options: vec!["rbind".into(), "rw".into()],
        ..Default::default()
    });
    let mut req = create_req(cid, spec);
    req.storages.push(Storage {
        driver: "ephemeral".into(),
        source: "tmpfs".into(),
        fstype: "tmpfs".into(),
        mount_point: volume.into(),
        ..Default::default()
    });
    agent.create_container(ctx(), &req).await?;
    agent
        .start_container(
            ctx(),
            &StartContainerRequest {
                container_id: cid.into(),
                ..Default::default()
            },
        )
        .await?;
    let (out, err) = tokio::try_join!(drain(&agent, cid, "", false), drain(&agent, cid, "", true))?;
    assert_eq!(wait(&agent, cid, "").await?, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..10],
        &[
            "1000",
            "1000 10 20",
            "read-only",
            "67108864",
            "0::/",
            "CapEff: 0000000000000400",
            "CapBnd: 0000000000000401",
            "512",
            "4096",
            "hi"
        ],
        "{out}"
    );
    for node in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd",
        "stdout",
    ] {
        assert!(
            lines[10].split(' ').any(|n| n == node),
            "/dev/{node} missing: {out}"
        );
    }
    let rm = RemoveContainerRequest {
        container_id: cid.into(),
        timeout: 10,
        ..Default::default()
    };
    agent.remove_container(ctx(), &rm).await?;

    // Without a pid entry the container still gets a PID namespace of its
    // own (never the VM's, where the agent is PID 1): its init is PID 1.
    // Also: no inherited ignored signals, OOM scores, no leaked descriptors (3 = ls's own).
    let cid = "c5";
    make_rootfs(&vm.shared(), cid)?;
    let script = "cat /proc/1/comm; grep -E '^VmRSS' /proc/1/status; \
                  grep -c ' /run/x tmpfs' /proc/mounts; \
                  grep SigIgn /proc/self/status; cat /proc/1/oom_score_adj /proc/self/oom_score_adj; \
                  ls /proc/self/fd | tr '\\n' ' '; echo; hostname";
    let mut spec = container_spec(cid, &["sh", "-c", script]);
    spec.Mounts.push(oci::Mount {
        destination: "/etc/hosts".into(),
        source: "/var/lib/containerd/not-in-the-guest/hosts".into(),
        type_: "bind".into(),
        options: vec!["rbind".into(), "ro".into()],
        ..Default::default()
    });
    spec.Mounts.push(oci::Mount {
        destination: "/var/run/x".into(),
        source: "tmpfs".into(),
        type_: "tmpfs".into(),
        ..Default::default()
    });
    if let Some(l) = spec.Linux.as_mut() {
        // No mount namespace asked: the agent makes one anyway. No uts: the VM's hostname.
        l.Namespaces
            .retain(|n| !["pid", "mount", "uts"].contains(&n.Type.as_str()));
    }
    agent
        .create_container(ctx(), &create_req(cid, spec))
        .await?;
    let start = StartContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    agent.start_container(ctx(), &start).await?;
    let out = drain(&agent, cid, "", false).await?;
    assert_eq!(wait(&agent, cid, "").await?, 0);
    assert!(
        out.starts_with("sh\n")
            && out.ends_with("\n1\nSigIgn:\t0000000000000000\n0\n0\n0 1 2 3 \nsandbox\n"),
        "{out}"
    );
    eprintln!("agent (PID 1) {}", out.lines().nth(1).unwrap_or_default());
    let rm = RemoveContainerRequest {
        container_id: cid.into(),
        timeout: 10,
        ..Default::default()
    };
    agent.remove_container(ctx(), &rm).await?;

    resources::scenario(&agent, vm).await?;
    // After the resource half: it reads the log port from the start of the boot.
    pod::scenario(vm).await?;

    agent
        .destroy_sandbox(ctx(), &DestroySandboxRequest::default())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_in_vm() -> Result<()> {
    let Some(image) = agent_client::testing::guest_image_dir() else {
        return Ok(());
    };
    let mut vm = Vm::boot(&image)?;
    let t0 = Instant::now();
    if let Err(e) = scenario(&vm, t0).await {
        eprintln!("{}", vm.helper_logs());
        eprintln!("--- guest console ---\n{}", vm.console());
        return Err(e);
    }
    // DestroySandbox powers the VM off: QEMU must exit by itself.
    let mut qemu = vm.qemu.take().context("qemu")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = qemu.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            eprintln!("--- guest console ---\n{}", vm.console());
            bail!("QEMU did not exit after DestroySandbox");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "QEMU exit status {status}");
    let console = vm.console();
    if std::env::var_os("KATA_TEST_KERNEL_ARGS").is_none() {
        // The default level is info (tests/latency.rs shows agent.log=debug).
        assert!(
            console.contains(" INFO ") && !console.contains(" DEBUG "),
            "log levels"
        );
    }
    eprintln!("--- guest console ---\n{console}");
    eprintln!("QEMU exited {:.2?} after launch", t0.elapsed());
    // The helper daemons go away with their VM (virtiofsd exits by itself;
    // vhost-device-vsock is killed by Drop); nothing must be left behind.
    let pids: Vec<u32> = vm.helpers.iter().map(|c| c.id()).collect();
    let dir = vm.dir.path().to_path_buf();
    drop(vm);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "helper {pid} still running"
        );
    }
    assert!(!dir.exists(), "test directory removed");
    Ok(())
}
