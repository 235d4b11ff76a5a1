//! What the spec restricts is restricted inside the container: capabilities,
//! no_new_privs, rlimits, read-only rootfs, masked and read-only paths,
//! sysctls, hostname, and seccomp (errnoRet, argument rules, execs too,
//! unknown names skipped with a warning in the agent's log, bad profiles
//! rejected with INVALID_ARGUMENT).
use agent_client::Agent;
use anyhow::{ensure, Result};
use protocols::oci;
use protocols::ttrpc::Code;

use super::{exec, expect_code, read_all, run};
use crate::common::*;

fn syscall(names: &[&str], action: &str, errno: u32) -> oci::LinuxSyscall {
    let mut s = oci::LinuxSyscall {
        Names: names.iter().map(|s| s.to_string()).collect(),
        Action: action.into(),
        ..Default::default()
    };
    s.set_errnoret(errno);
    s
}

fn profile(default: &str, syscalls: Vec<oci::LinuxSyscall>) -> oci::LinuxSeccomp {
    oci::LinuxSeccomp {
        DefaultAction: default.into(),
        Architectures: vec!["SCMP_ARCH_X86_64".into(), "SCMP_ARCH_X86".into()],
        Syscalls: syscalls,
        ..Default::default()
    }
}

pub async fn scenario(agent: &dyn Agent, vm: &Vm) -> Result<()> {
    restricted(agent, vm).await?;
    seccomp(agent, vm).await
}

/// A root process with two capabilities, no_new_privs, rlimits, a read-only
/// rootfs, masked and read-only paths, a sysctl and a hostname; its filter
/// (installed right before exec, because of no_new_privs) answers mknod ENOSPC.
async fn restricted(agent: &dyn Agent, vm: &Vm) -> Result<()> {
    let cid = "sec";
    make_rootfs(&vm.shared(), cid)?;
    let root = vm.shared().join(cid).join("rootfs");
    std::fs::create_dir_all(root.join("etc/private"))?;
    std::fs::write(root.join("etc/private/key"), "k")?;
    std::fs::write(root.join("etc/secret"), "s3cret")?;
    std::fs::create_dir_all(root.join("etc/conf"))?;
    // Another user's private file: root without CAP_DAC_OVERRIDE cannot read it.
    let theirs = root.join("etc/theirs");
    std::fs::write(&theirs, "x")?;
    std::os::unix::fs::chown(&theirs, Some(1000), Some(1000))?;
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let script =
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|NoNewPrivs)' /proc/self/status | tr -s '\\t' ' '; \
         cat /etc/theirs 2>/dev/null || echo theirs:denied; \
         touch /tmp/mine && chown 1000 /tmp/mine 2>/dev/null || echo chown:denied; \
         echo $(ls /etc/private | wc -l) $(wc -c < /etc/secret); \
         touch /etc/private/new 2>/dev/null || echo masked-dir:ro; \
         touch /etc/conf/new 2>/dev/null || echo conf:ro; \
         echo 1 > /proc/sys/kernel/msgmni 2>/dev/null || echo proc-sys:ro; \
         touch /new 2>/dev/null || echo rootfs:ro; \
         echo $(ulimit -n) $(ulimit -Hn) $(ulimit -u); \
         cat /proc/sys/kernel/msgmnb; hostname; \
         mknod /tmp/fifo p 2>&1; echo mknod=$?";
    let mut spec = container_spec(cid, &["sh", "-c", script]);
    spec.Hostname = "sec-host".into();
    if let Some(r) = spec.Root.as_mut() {
        r.Readonly = true;
    }
    spec.Mounts.push(oci::Mount {
        destination: "/tmp".into(),
        source: "tmpfs".into(),
        type_: "tmpfs".into(),
        ..Default::default()
    });
    if let Some(p) = spec.Process.as_mut() {
        let caps = || vec!["CAP_KILL".to_string(), "CAP_NET_RAW".to_string()];
        p.Capabilities = Some(oci::LinuxCapabilities {
            Bounding: caps(),
            Effective: caps(),
            Permitted: caps(),
            ..Default::default()
        })
        .into();
        p.NoNewPrivileges = true;
        let rlimit = |t: &str, soft, hard| oci::POSIXRlimit {
            Type: t.into(),
            Soft: soft,
            Hard: hard,
            ..Default::default()
        };
        p.Rlimits = vec![
            rlimit("RLIMIT_NOFILE", 321, 654),
            rlimit("RLIMIT_NPROC", 3333, 3333),
        ];
    }
    if let Some(l) = spec.Linux.as_mut() {
        l.MaskedPaths
            .extend(["/etc/private".to_string(), "/etc/secret".to_string()]);
        l.ReadonlyPaths.push("/etc/conf".into());
        l.Sysctl.insert("kernel.msgmnb".into(), "12345".into());
        l.Seccomp = Some(profile(
            "SCMP_ACT_ALLOW",
            vec![syscall(&["mknod", "mknodat"], "SCMP_ACT_ERRNO", 28)],
        ))
        .into();
    }
    run(agent, cid, spec).await?;
    let (out, err) = tokio::try_join!(
        read_all(agent, cid, "", false),
        read_all(agent, cid, "", true)
    )?;
    ensure!(agent.wait_process(cid, "").await? == 0, "{out}{err}");
    let want = [
        "CapInh: 0000000000000000",
        "CapPrm: 0000000000002020",
        "CapEff: 0000000000002020",
        "CapBnd: 0000000000002020",
        "NoNewPrivs: 1",
        "theirs:denied",
        "chown:denied",
        "0 0",
        "masked-dir:ro",
        "conf:ro",
        "proc-sys:ro",
        "rootfs:ro",
        "321 654 3333",
        "12345",
        "sec-host",
        "mknod: /tmp/fifo: No space left on device",
        "mknod=1",
    ];
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines == want, "got:\n{out}\nwant:\n{}", want.join("\n"));
    agent.remove_container(cid, 10).await?;
    Ok(())
}

/// A root process with full capabilities and no no_new_privs (the filter is
/// installed before the user switch): mkdir → EPERM via errnoRet, kill with
/// SIGUSR1 → EACCES via an argument rule, the rest works; execs are filtered too.
async fn seccomp(agent: &dyn Agent, vm: &Vm) -> Result<()> {
    let cid = "scmp";
    make_rootfs(&vm.shared(), cid)?;
    let mut kill = syscall(&["kill"], "SCMP_ACT_ERRNO", 13);
    kill.Args = vec![oci::LinuxSeccompArg {
        Index: 1,
        Value: 10, // SIGUSR1
        Op: "SCMP_CMP_EQ".into(),
        ..Default::default()
    }];
    let filter = profile(
        "SCMP_ACT_ALLOW",
        vec![
            syscall(
                &["mkdir", "mkdirat", "no_such_syscall"],
                "SCMP_ACT_ERRNO",
                1,
            ),
            kill,
        ],
    );
    let mut spec = container_spec(cid, &["sleep", "300"]);
    if let Some(l) = spec.Linux.as_mut() {
        l.Seccomp = Some(filter.clone()).into();
    }
    let mut bad = spec.clone();
    if let Some(l) = bad.Linux.as_mut() {
        l.Seccomp = Some(profile("SCMP_ACT_SOMETIMES", vec![])).into();
    }
    expect_code(
        agent.create_container(create_req(cid, bad)).await,
        Code::INVALID_ARGUMENT,
        "invalid seccomp default action",
    )?;
    run(agent, cid, spec).await?;
    let script = "mkdir /tmp/d 2>&1; echo mkdir=$?; touch /tmp/f && echo touch=ok; \
                  kill -USR1 $$ 2>/dev/null; echo usr1=$?; kill -0 $$ && echo kill0=ok; \
                  grep -E '^(Seccomp|NoNewPrivs)' /proc/self/status | tr -s '\\t' ' '";
    let (status, out, err) = exec(agent, cid, "probe", script).await?;
    ensure!(status == 0, "{out}{err}");
    let want = [
        "mkdir: can't create directory '/tmp/d': Operation not permitted",
        "mkdir=1",
        "touch=ok",
        "usr1=1",
        "kill0=ok",
        "NoNewPrivs: 0",
        "Seccomp: 2",
        "Seccomp_filters: 2",
    ];
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines == want, "got:\n{out}\nwant:\n{}", want.join("\n"));
    agent.remove_container(cid, 10).await?;
    // runc's behaviour for a name libseccomp does not know: skipped, warned.
    let log = crate::resources::read_log_port(vm, "no_such_syscall")?;
    let line = log
        .lines()
        .find(|l| l.contains("no_such_syscall"))
        .unwrap_or_default();
    ensure!(line.contains("WARN"), "warning in the agent log: {line:?}");
    Ok(())
}
