//! End to end, nothing mocked: real containerd, the real shim, QEMU, the
//! guest kernel and agent, a real container process.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::{
    assert_no_leftovers, on_both_containerds, require_vm, shim_dir, text, wait_until, write_config,
    Containerd, Dist, NAMESPACE,
};
use protocols::containerd::api;
use protocols::containerd::shim_async::TaskClient;
use protocols::containerd::ttrpc::{self, context, Code};

on_both_containerds!(sync uname_shows_the_guest_kernel);
fn uname_shows_the_guest_kernel(dist: Dist) -> Result<()> {
    require_vm!();
    let ctd = Containerd::start_on(&dist)?;
    let out = ctd.run("uname", &[], &["uname", "-r"])?;
    assert!(
        out.status.success(),
        "ctr failed: {}\n{}",
        text(&out.stderr),
        ctd.log()
    );
    let guest = std::fs::read_to_string(integration_tests::guest_dir().join("kernel-release"))?;
    let host = text(&Command::new("uname").arg("-r").output()?.stdout);
    assert_eq!(
        text(&out.stdout).trim(),
        guest.trim(),
        "container must see the guest kernel"
    );
    assert_ne!(
        text(&out.stdout).trim(),
        host.trim(),
        "must not be the host kernel"
    );
    assert_no_leftovers(ctd);
    Ok(())
}

on_both_containerds!(sync exit_code_and_both_streams_reach_ctr);
fn exit_code_and_both_streams_reach_ctr(dist: Dist) -> Result<()> {
    require_vm!();
    let ctd = Containerd::start_on(&dist)?;
    let out = ctd.run(
        "streams",
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    )?;
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "out");
    assert!(
        text(&out.stderr).contains("err"),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_no_leftovers(ctd);
    Ok(())
}

/// A reader slower than the container still gets every byte: `ctr run`
/// closes its stdout fifo when it hears of the exit, so the shim reports the
/// exit only once the fifo is empty (without that, up to the fifo's 1 MiB
/// was lost here whenever the reader lagged at the end).
#[test]
fn a_slow_reader_gets_every_byte_of_stdout() -> Result<()> {
    use std::io::Read;
    require_vm!();
    let ctd = Containerd::start()?;
    let mib = 8;
    let mut child = Command::new(ctd.dist.ctr())
        .arg("--address")
        .arg(&ctd.socket)
        .args(["--namespace", NAMESPACE, "run", "--rm", "--runtime"])
        .args([integration_tests::RUNTIME, integration_tests::IMAGE, "slow"])
        .args(["dd", "if=/dev/zero", "bs=1M", &format!("count={mib}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("ctr run")?;
    let mut out = child.stdout.take().context("ctr stdout")?;
    let (mut buf, mut bytes) = (vec![0u8; 64 * 1024], 0usize);
    loop {
        // ~16 MiB/s: a third of what a container writes under TCG.
        std::thread::sleep(Duration::from_millis(4));
        match out.read(&mut buf)? {
            0 => break,
            n => bytes += n,
        }
    }
    let status = child.wait()?;
    assert!(status.success(), "ctr run: {status}\n{}", ctd.log());
    assert_eq!(bytes, mib << 20, "stdout bytes that reached ctr's reader");
    assert_no_leftovers(ctd);
    Ok(())
}

#[test]
fn container_sees_its_image_rootfs() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let out = ctd.run("rootfs", &[], &["cat", "/etc/kata-test-marker"])?;
    assert!(out.status.success(), "ctr failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "kata-busybox image marker");
    assert_no_leftovers(ctd);
    Ok(())
}

#[test]
fn missing_kernel_is_a_clear_error_and_leaves_nothing() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let bad = ctd.dir.join("bad-kernel.toml");
    write_config(&bad, |t| t.replace("/vmlinux\"", "/no-such-vmlinux\""))?;
    let bad_path = bad.to_string_lossy().into_owned();
    let out = ctd.run(
        "badkernel",
        &["--runtime-config-path", &bad_path],
        &["true"],
    )?;
    assert!(!out.status.success(), "must fail");
    let err = text(&out.stderr);
    assert!(
        err.contains("no-such-vmlinux"),
        "error should name the kernel path: {err}"
    );
    // The same containerd still runs containers afterwards.
    let ok = ctd.run("afterbad", &[], &["true"])?;
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_no_leftovers(ctd);
    Ok(())
}

/// Starts a shim daemon by hand (as containerd would) for bundle `dir`.
fn start_shim(ctd: &Containerd, id: &str, bundle: &std::path::Path) -> Result<String> {
    let out = Command::new(shim_dir().join("containerd-shim-kata-v2"))
        .args(["-namespace", NAMESPACE, "-id", id, "-address"])
        .arg(&ctd.socket)
        .args(["-publish-binary", "containerd", "start"])
        .current_dir(bundle)
        .env("TTRPC_ADDRESS", ctd.ttrpc_socket())
        .env("KATA_CONF_FILE", &ctd.config)
        .output()?;
    anyhow::ensure!(out.status.success(), "shim start: {}", text(&out.stderr));
    Ok(text(&out.stdout).trim().to_owned())
}

fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_codes_and_the_shim_keeps_serving() -> Result<()> {
    require_vm!();
    let ctd = tokio::task::spawn_blocking(Containerd::start).await??;
    let bundle = ctd.dir.join("bundle-bad");
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    std::fs::write(bundle.join("config.json"), "this is not json")?;
    let addr = start_shim(&ctd, "badbundle", &bundle)?;
    let client = TaskClient::new(
        ttrpc::r#async::Client::connect(&addr)
            .await
            .context("connect")?,
    );
    let ctx = || context::with_timeout(Duration::from_secs(30).as_nanos() as i64);

    let create = api::CreateTaskRequest {
        id: "badbundle".into(),
        bundle: bundle.to_string_lossy().into_owned(),
        ..Default::default()
    };
    let code = code_of(client.create(ctx(), &create).await);
    assert_eq!(code, Code::INVALID_ARGUMENT);

    let missing = api::CreateTaskRequest {
        id: "nobundle".into(),
        bundle: "/nonexistent/bundle".into(),
        ..Default::default()
    };
    assert_eq!(
        code_of(client.create(ctx(), &missing).await),
        Code::NOT_FOUND
    );

    let start = api::StartRequest {
        id: "ghost".into(),
        ..Default::default()
    };
    assert_eq!(code_of(client.start(ctx(), &start).await), Code::NOT_FOUND);
    let kill = api::KillRequest {
        id: "ghost".into(),
        signal: 9,
        ..Default::default()
    };
    assert_eq!(code_of(client.kill(ctx(), &kill).await), Code::NOT_FOUND);
    let delete = api::DeleteRequest {
        id: "ghost".into(),
        ..Default::default()
    };
    assert_eq!(
        code_of(client.delete(ctx(), &delete).await),
        Code::NOT_FOUND
    );
    let pids = api::PidsRequest {
        id: "ghost".into(),
        ..Default::default()
    };
    assert_eq!(code_of(client.pids(ctx(), &pids).await), Code::NOT_FOUND);
    let checkpoint = api::CheckpointTaskRequest {
        id: "ghost".into(),
        ..Default::default()
    };
    assert_eq!(
        code_of(client.checkpoint(ctx(), &checkpoint).await),
        Code::UNIMPLEMENTED
    );

    // Still serving: Connect answers (NotFound for an unknown id, not a dead socket).
    let connect = api::ConnectRequest {
        id: "ghost".into(),
        ..Default::default()
    };
    assert_eq!(
        code_of(client.connect(ctx(), &connect).await),
        Code::NOT_FOUND
    );

    // Nothing created, so Shutdown ends the daemon and removes its socket.
    let _ = client
        .shutdown(ctx(), &api::ShutdownRequest::default())
        .await;
    let sock = addr.trim_start_matches("unix://").to_owned();
    wait_until(Duration::from_secs(10), || {
        !std::path::Path::new(&sock).exists()
    })
    .context("daemon socket still there after Shutdown")?;
    assert_no_leftovers(ctd);
    Ok(())
}
