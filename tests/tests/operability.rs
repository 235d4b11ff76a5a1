//! Operator commands against this machine: `check --boot` boots a real
//! sandbox, and `console` opens the guest's debug console in a running pod's
//! VM (enabled through a `config.d` drop-in) and is refused where the
//! configuration leaves it off. These need root, QEMU and the built guest
//! image: a missing prerequisite fails the test, it does not skip it.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result};
use integration_tests::{leaks, shim_dir, vm_tests_ready, write_config, Containerd};

fn shim() -> PathBuf {
    shim_dir().join("containerd-shim-kata-v2")
}

fn shim_run(args: &[&str]) -> Result<Output> {
    std::process::Command::new(shim())
        .args(args)
        .output()
        .with_context(|| format!("running {} {args:?}", shim().display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_on_this_host_picks_tcg_and_hybrid_vsock_and_boots() -> Result<()> {
    vm_tests_ready().context("prerequisite")?;
    let dir = tempdir()?;
    let config = dir.join("configuration.toml");
    write_config(&config, |t| t)?;
    let c = config.to_string_lossy().into_owned();
    let out = shim_run(&["check", "--boot", "--json", "--config", &c])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let line = |name: &str| {
        report["findings"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["check"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} line: {report:#}"))
    };
    let accel = line("accelerator");
    assert_eq!(accel["verdict"], "warn", "{accel}");
    let why = accel["detail"].as_str().unwrap_or("");
    assert!(why.starts_with("TCG") && why.contains("PVM"), "{why}");
    let vsock = line("vsock");
    assert_eq!(vsock["verdict"], "ok", "{vsock}");
    assert!(
        vsock["detail"]
            .as_str()
            .is_some_and(|d| d.contains("hybrid vsock") && d.contains("vhost-device-vsock")),
        "{vsock}"
    );
    assert_eq!(line("boot")["verdict"], "ok", "{report:#}");
    let secs = report["boot_seconds"].as_f64().unwrap_or(0.0);
    assert!(secs > 0.0 && secs < 60.0, "boot took {secs} s");
    eprintln!("check --boot: sandbox ready in {secs:.2} s");
    // The test sandbox is gone: no VM, helper, mount or directory left.
    let id = report["boot_sandbox"].as_str().unwrap_or("?").to_owned();
    let left = left_by(&dir, &[&id]);
    assert!(left.is_empty(), "check --boot left behind: {left:#?}");

    // Human output, with the kernel gone: a FAIL line naming it, exit 1.
    let broken = dir.join("broken.toml");
    write_config(&broken, |t| t.replace("/vmlinux\"", "/no-such-vmlinux\""))?;
    let b = broken.to_string_lossy().into_owned();
    let out = shim_run(&["check", "--config", &b])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("[FAIL] guest kernel") && l.contains("no-such-vmlinux")),
        "{human}"
    );
    assert!(
        human.contains("verdict: this host cannot run pods"),
        "{human}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What the leak check finds of these sandboxes (other tests' VMs may run
/// on the machine at the same time: they are not ours to judge).
fn left_by(scope: &Path, sandboxes: &[&str]) -> Vec<String> {
    let dirs: Vec<String> = sandboxes
        .iter()
        .map(|id| {
            let root = Path::new(containerd_shim_kata_v2::persist::RUN_ROOT);
            let base = containerd_shim_kata_v2::persist::SandboxPaths::new(root, id).base;
            base.to_string_lossy().into_owned()
        })
        .collect();
    leaks::settle_and_check(scope)
        .into_iter()
        .filter(|l| dirs.iter().any(|d| l.contains(d.as_str())))
        .collect()
}

fn tempdir() -> Result<PathBuf> {
    let dir = PathBuf::from(format!(
        "/var/lib/kata-shim-test/operability-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A configuration whose `config.d` drop-in turns the debug console on.
fn console_config(dir: &Path) -> Result<PathBuf> {
    let main = dir.join("configuration.toml");
    write_config(&main, |t| t)?;
    std::fs::create_dir_all(dir.join("config.d"))?;
    std::fs::write(
        dir.join("config.d/50-debug-console.toml"),
        "[agent.kata]\ndebug_console_enabled = true\n",
    )?;
    Ok(main)
}

#[test]
fn debug_console_runs_commands_in_the_vm_only_when_enabled() -> Result<()> {
    vm_tests_ready().context("prerequisite")?;
    let ctd = Containerd::start()?;
    let conf_dir = ctd.dir.join("console-config");
    std::fs::create_dir_all(&conf_dir)?;
    let config = console_config(&conf_dir)?;
    let config = config.to_string_lossy().into_owned();
    let result = (|| -> Result<()> {
        ctd.run_detached(
            "console-on",
            &["--runtime-config-path", &config],
            &["sleep", "300"],
        )?;
        // Outside every container: the guest's own kernel, PID 1 is the
        // agent, and the containers' share is visible.
        let out = shim_run(&[
            "console",
            "console-on",
            "uname -r; cat /proc/1/comm; ls /run/kata-containers/shared/containers/",
        ])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(stdout.contains("kata-shim"), "guest kernel: {stdout}");
        assert!(stdout.lines().any(|l| l == "init"), "PID 1: {stdout}");
        assert!(stdout.contains("console-on"), "share: {stdout}");
        // The command's exit status is the console's.
        let out = shim_run(&["console", "console-on", "false"])?;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));

        // Default configuration (console off): refused, saying how to enable it.
        ctd.run_detached("console-off", &[], &["sleep", "300"])?;
        let out = shim_run(&["console", "console-off", "uname -r"])?;
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("debug_console_enabled"), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("kata-shim"));
        Ok(())
    })();
    ctd.remove("console-on");
    ctd.remove("console-off");
    let scope = ctd.dir.clone();
    drop(ctd);
    result?;
    let left = left_by(&scope, &["console-on", "console-off"]);
    assert!(left.is_empty(), "left behind: {left:#?}");
    Ok(())
}

/// One scrape of `containerd-shim-kata-v2 metrics [ID]`, parsed by a
/// Prometheus text-format parser.
fn scrape(args: &[&str]) -> Result<prometheus_parse::Scrape> {
    let mut all = vec!["metrics"];
    all.extend_from_slice(args);
    let out = shim_run(&all)?;
    anyhow::ensure!(out.status.success(), "metrics: {}", text(&out));
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<std::io::Result<String>> = body.lines().map(|l| Ok(l.to_owned())).collect();
    Ok(prometheus_parse::Scrape::parse(lines.into_iter())?)
}

fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn metrics_of_a_running_sandbox_parse_and_follow_its_cpu() -> Result<()> {
    vm_tests_ready().context("prerequisite")?;
    let ctd = Containerd::start()?;
    let id = "metrics-pod";
    let result = (|| -> Result<()> {
        ctd.run_detached(id, &[], &["sleep", "300"])?;
        let s0 = scrape(&[id])?;
        for process in ["qemu", "virtiofsd", "vhost-device-vsock", "shim"] {
            let rss = value(&s0, "kata_shim_process_rss_bytes", &[("process", process)]);
            assert!(rss.is_some_and(|v| v > 0.0), "{process} rss: {rss:?}");
            let pss = value(&s0, "kata_shim_process_pss_bytes", &[("process", process)]);
            assert!(pss.is_some_and(|v| v > 0.0), "{process} pss: {pss:?}");
        }
        let launch = value(
            &s0,
            "kata_shim_pod_start_phase_seconds",
            &[("phase", "vm_launch")],
        );
        assert!(launch.is_some_and(|v| v > 0.0), "vm_launch: {launch:?}");
        let qemu_cpu = |s: &prometheus_parse::Scrape| {
            value(
                s,
                "kata_shim_process_cpu_seconds_total",
                &[("sandbox", id), ("process", "qemu")],
            )
            .unwrap_or(f64::NAN)
        };
        std::thread::sleep(std::time::Duration::from_secs(3));
        let s1 = scrape(&[id])?;
        let idle = qemu_cpu(&s1) - qemu_cpu(&s0);
        // Burn the guest's vCPU for 4 s from inside the container.
        ctd.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            "burn",
            id,
            "sh",
            "-c",
            "end=$(( $(date +%s) + 4 )); while [ $(date +%s) -lt $end ]; do :; done",
        ])?;
        let s2 = scrape(&[id])?;
        let burn = qemu_cpu(&s2) - qemu_cpu(&s1);
        eprintln!("qemu CPU: {idle:.2} s over 3 s idle, {burn:.2} s over the 4 s burn");
        if let Ok(out) = shim_run(&["metrics", id]) {
            eprintln!("sample:\n{}", String::from_utf8_lossy(&out.stdout));
        }
        assert!(burn > idle + 1.0, "idle {idle:.2} s, burning {burn:.2} s");
        // The node-wide view has the sandbox too.
        let all = scrape(&[])?;
        assert!(value(&all, "kata_shim_sandbox_up", &[("sandbox", id)]) == Some(1.0));
        Ok(())
    })();
    ctd.remove(id);
    let scope = ctd.dir.clone();
    drop(ctd);
    result?;
    let left = left_by(&scope, &[id]);
    assert!(left.is_empty(), "left behind: {left:#?}");
    Ok(())
}
