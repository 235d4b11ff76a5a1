//! CRI exec and attach streaming through containerd's streaming server,
//! with and without a terminal, into containers in a VM (the rest of the CRI
//! suite is `cri.rs`).

use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::cri::client::CONTAINER_RUNNING;
use integration_tests::cri::{self, assert_no_leftovers, pod_with_sleeper, setup, setup_on, Cri};
use integration_tests::{on_both_containerds, require_vm, text, Dist, IMAGE};
use k8s_cri::v1 as api;

fn exec_request(id: &str, cmd: &[&str], tty: bool, stdin: bool) -> api::ExecRequest {
    api::ExecRequest {
        container_id: id.to_owned(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

on_both_containerds!(exec_streaming_with_and_without_tty);
async fn exec_streaming_with_and_without_tty(dist: Dist) -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup_on(&dist).await?;
    let (_, pod, id) = pod_with_sleeper(&mut c, "exec")
        .await
        .with_context(|| ctd.log())?;
    let t = Duration::from_secs(60);

    // No tty: separate streams and the exit code on the error channel.
    let req = exec_request(
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        false,
        false,
    );
    let url =
        c.rt.exec(req)
            .await
            .with_context(|| ctd.log())?
            .into_inner()
            .url;
    let o = cri::stream::run(&url, None, b"", t).await?;
    assert_eq!(
        (o.stdout_text().as_str(), text(&o.stderr).as_str()),
        ("out\n", "err\n")
    );
    assert_eq!(o.exit_code(), Some(3), "{o:?}");

    // stdin reaches the process.
    let req = exec_request(&id, &["head", "-n", "1"], false, true);
    let url = c.rt.exec(req).await?.into_inner().url;
    let o = cri::stream::run(&url, None, b"typed line\n", t).await?;
    assert_eq!(o.stdout_text(), "typed line\n");
    assert_eq!(o.exit_code(), Some(0), "{o:?}");

    // tty (what `crictl exec -it` does): a pty, CRLF output, window size.
    let req = exec_request(&id, &["sh", "-c", "tty; sleep 1; stty size"], true, true);
    let url = c.rt.exec(req).await?.into_inner().url;
    let o = cri::stream::run(&url, Some((100, 30)), b"", t).await?;
    let out = o.stdout_text();
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert!(out.contains("\r\n"), "tty output has CRLF: {out:?}");
    assert!(out.contains("30 100"), "window size: {out:?}");
    assert_eq!(o.exit_code(), Some(0), "{o:?}");
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_streaming_with_tty() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let pod_cfg = c.pod_config("attach-tty");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let t = Duration::from_secs(60);

    // tty: an interactive shell on the container's pty.
    let mut cfg = Cri::container_config("shell", IMAGE, &["sh"]);
    cfg.stdin = true;
    cfg.tty = true;
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let url =
        c.rt.attach(api::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await?
        .into_inner()
        .url;
    let o = cri::stream::run(
        &url,
        Some((80, 24)),
        b"echo attached-$((40+2))\nexit 5\n",
        t,
    )
    .await?;
    assert!(o.stdout_text().contains("attached-42"), "{o:?}");
    assert_eq!(c.wait_exited(&id, t).await?.exit_code, 5);
    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_streaming_without_tty() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let pod_cfg = c.pod_config("attach");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let t = Duration::from_secs(60);

    // No tty: stdin lines in, echoed lines out on the attached stream. The
    // container keeps running: when it exits right after answering,
    // containerd may end the attach before the answer reaches the stream
    // (seen: the lines only in the CRI log) — a race of the exit, not of IO.
    let mut cfg = Cri::container_config(
        "echoer",
        IMAGE,
        &["sh", "-c", "echo ready; while read l; do echo got $l; done"],
    );
    cfg.stdin = true;
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;
    Cri::wait_log_line(&Cri::log_file(&pod_cfg, &cfg), "ready", t).await?;
    let url =
        c.rt.attach(api::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .with_context(|| ctd.log())?
        .into_inner()
        .url;
    let o = cri::stream::run_until(&url, b"hello\nthere\n", "got there\n", t).await?;
    let log = std::fs::read_to_string(Cri::log_file(&pod_cfg, &cfg)).unwrap_or_default();
    assert_eq!(
        o.stdout_text(),
        "got hello\ngot there\n",
        "{o:?}\nlog:\n{log}"
    );
    assert_eq!(
        c.container_status(&id).await?.state,
        CONTAINER_RUNNING,
        "stdin stays open after the attach ends"
    );

    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}
