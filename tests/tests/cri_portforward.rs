//! CRI PortForward into a pod's VM, as `kubectl port-forward` does it
//! (websocket protocol, see `cri::portforward`): containerd dials
//! `localhost:PORT` in the pod's network namespace on the host, the shim's
//! redirect there carries it over vsock to the agent, which connects to the
//! guest's loopback where the container listens.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use integration_tests::cri::portforward::{checksum, exchange, pattern};
use integration_tests::cri::{assert_no_leftovers, setup_on, Cri};
use integration_tests::{on_both_containerds, require_vm, Dist, IMAGE};
use k8s_cri::v1 as api;

/// The port the container's echo server listens on (in the guest).
const ECHO_PORT: u16 = 8080;
/// A port nothing listens on in the guest.
const CLOSED_PORT: u16 = 9;
const CONNECTIONS: u64 = 5;
const BYTES_EACH_WAY: usize = 10 << 20;

async fn forward_url(c: &mut Cri, pod: &str, port: u16) -> Result<String> {
    Ok(c.rt
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod.to_owned(),
            port: vec![i32::from(port)],
        })
        .await
        .context("PortForward")?
        .into_inner()
        .url)
}

/// One small echo through a fresh port-forward; retried while the server in
/// the container may still be starting.
async fn echo_ready(c: &mut Cri, pod: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url = forward_url(c, pod, ECHO_PORT).await?;
        let o = exchange(&url, ECHO_PORT, b"hello", 5, Duration::from_secs(30)).await;
        match o {
            Ok(o) if o.data == b"hello" => return Ok(()),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            other => anyhow::bail!("echo server not reachable: {other:?}"),
        }
    }
}

on_both_containerds!(port_forward_moves_data_both_ways);
async fn port_forward_moves_data_both_ways(dist: Dist) -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup_on(&dist).await?;
    let pod_cfg = c.pod_config("portfwd");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    // busybox nc: `-ll -e` forks a `cat` per connection, so it echoes
    // every connection, concurrently, until the pod stops.
    let cfg = Cri::container_config(
        "echo",
        IMAGE,
        &["nc", "-ll", "-p", &ECHO_PORT.to_string(), "-e", "cat"],
    );
    let id = c
        .run_container(&pod, &cfg, &pod_cfg)
        .await
        .with_context(|| ctd.log())?;
    echo_ready(&mut c, &pod).await.with_context(|| ctd.log())?;

    // 10 MiB each way through each of 5 concurrent connections.
    let t = Instant::now();
    let mut runs = Vec::new();
    for n in 0..CONNECTIONS {
        let url = forward_url(&mut c, &pod, ECHO_PORT).await?;
        runs.push(tokio::spawn(async move {
            let data = pattern(n + 1, BYTES_EACH_WAY);
            let o = exchange(
                &url,
                ECHO_PORT,
                &data,
                data.len(),
                Duration::from_secs(600),
            )
            .await?;
            ensure!(
                o.data.len() == data.len() && checksum(&o.data) == checksum(&data),
                "connection {n}: sent {} bytes (fnv {:x}), got {} back (fnv {:x}); first difference at {:?}; error channel {:?}",
                data.len(),
                checksum(&data),
                o.data.len(),
                checksum(&o.data),
                o.data.iter().zip(&data).position(|(a, b)| a != b),
                o.error
            );
            ensure!(o.data == data, "connection {n}: bytes differ");
            Ok(())
        }));
    }
    for r in runs {
        r.await.context("join")?.with_context(|| ctd.log())?;
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "port-forward: {CONNECTIONS} x {} MiB each way in {secs:.1} s ({:.1} MiB/s each way)",
        BYTES_EACH_WAY >> 20,
        (CONNECTIONS as f64 * (BYTES_EACH_WAY >> 20) as f64) / secs
    );

    // Nothing listens on the port in the guest: an error on the error
    // channel, no data.
    let url = forward_url(&mut c, &pod, CLOSED_PORT).await?;
    let o = exchange(&url, CLOSED_PORT, b"", 0, Duration::from_secs(60)).await?;
    assert!(o.data.is_empty(), "{o:?}");
    assert!(
        o.error.contains(&format!("port {CLOSED_PORT}")),
        "an error for the closed port: {o:?}"
    );

    // And the pod keeps serving: port-forward and the agent alike.
    echo_ready(&mut c, &pod).await?;
    assert_eq!(
        c.exec_ok(&id, &["echo", "still here"]).await?,
        "still here\n"
    );

    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}
