//! A pod's network namespace filled after its VM booted (as nerdctl's and
//! Docker's hooks do, or a second CNI network): a second interface and an
//! IPv6 address with a route appear in the netns of a running pod; the next
//! container's Start hot-plugs a NIC for the interface (q35) and pushes
//! addresses, routes, MTU and neighbours into the guest.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use integration_tests::cri::{assert_no_leftovers, pod_with_sleeper, setup, vms, Cri};
use integration_tests::{require_vm, IMAGE};

/// Runs `ip`/`nsenter`... as root; fails with its stderr.
fn run(cmd: &[&str]) -> Result<String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The network namespace the test makes for the far end of its veth,
/// deleted (with the veth pair) whatever happens.
struct TestNetns(String);

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interfaces_and_ipv6_added_after_boot_reach_the_guest() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let (pod_cfg, pod, first) = pod_with_sleeper(&mut c, "netlate")
        .await
        .with_context(|| ctd.log())?;
    let qemu = vms::vm_of(&pod).context("no VM for the pod")?.pid;
    // QEMU runs in the pod's netns.
    let pod_ns = format!("--net=/proc/{qemu}/ns/net");
    let in_pod = |args: &[&str]| -> Result<String> {
        let mut cmd = vec!["nsenter", &pod_ns];
        cmd.extend_from_slice(args);
        run(&cmd)
    };

    // A veth pair: `net1` into the pod's netns, `kth0` in a netns of ours.
    let ns = TestNetns(format!("kt-net-{}", std::process::id()));
    run(&["ip", "netns", "add", &ns.0])?;
    run(&[
        "ip", "-n", &ns.0, "link", "add", "kth0", "type", "veth", "peer", "name", "net1",
    ])?;
    run(&[
        "ip",
        "-n",
        &ns.0,
        "link",
        "set",
        "net1",
        "netns",
        &qemu.to_string(),
    ])?;
    run(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        "192.168.211.1/24",
        "dev",
        "kth0",
    ])?;
    run(&["ip", "-n", &ns.0, "link", "set", "kth0", "up"])?;
    in_pod(&["ip", "link", "set", "net1", "mtu", "1400", "up"])?;
    in_pod(&["ip", "addr", "add", "192.168.211.2/24", "dev", "net1"])?;
    in_pod(&[
        "ip",
        "neigh",
        "add",
        "192.168.211.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "net1",
        "nud",
        "permanent",
    ])?;
    // IPv6 on the CNI interface, with a route through a gateway.
    in_pod(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:7e57::2/64",
        "dev",
        "eth0",
        "nodad",
    ])?;
    in_pod(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:7e58::/64",
        "via",
        "fd00:7e57::1",
        "dev",
        "eth0",
    ])?;

    // The next container's Start brings them into the guest.
    let cfg = Cri::container_config("second", IMAGE, &["sleep", "3600"]);
    let second = c.run_container(&pod, &cfg, &pod_cfg).await?;
    let taps = in_pod(&["ip", "-o", "link", "show"])?;
    assert!(
        taps.contains("tap0_kata") && taps.contains("tap1_kata"),
        "a tap per interface in the pod netns:\n{taps}"
    );

    let addrs = c.exec_ok(&second, &["ip", "addr"]).await?;
    for want in ["192.168.211.2/24", "fd00:7e57::2/64", "10.247."] {
        assert!(addrs.contains(want), "{want} in the guest:\n{addrs}");
    }
    assert!(
        addrs.contains("net1"),
        "net1 named as on the host:\n{addrs}"
    );
    let routes6 = c.exec_ok(&second, &["ip", "-6", "route"]).await?;
    assert!(
        routes6.contains("fd00:7e58::/64 via fd00:7e57::1 dev eth0"),
        "the IPv6 route:\n{routes6}"
    );
    let mtu = c
        .exec_ok(&second, &["cat", "/sys/class/net/net1/mtu"])
        .await?;
    assert_eq!(mtu.trim(), "1400", "net1's MTU");
    let eth0_mtu = c
        .exec_ok(&first, &["cat", "/sys/class/net/eth0/mtu"])
        .await?;
    // (The host's /sys is its own netns's: ask ip in the pod's.)
    let link = in_pod(&["ip", "-o", "link", "show", "dev", "eth0"])?;
    let host_mtu = link
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .with_context(|| format!("no mtu in {link}"))?;
    assert_eq!(eth0_mtu.trim(), host_mtu, "eth0's MTU as CNI set it");
    let neigh = c.exec_ok(&second, &["ip", "neigh"]).await?;
    assert!(
        neigh.contains("192.168.211.9") && neigh.contains("02:00:00:00:00:09"),
        "the permanent neighbour:\n{neigh}"
    );

    // Traffic over the hot-plugged NIC reaches the far end of the veth.
    let mut last = String::new();
    for _ in 0..5 {
        let r = c
            .exec_sync(
                &second,
                &["ping", "-c", "2", "-W", "2", "192.168.211.1"],
                30,
            )
            .await?;
        last = format!(
            "exit {}: {}{}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        if r.exit_code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(last.starts_with("exit 0"), "ping over net1: {last}");

    c.remove_pod(&pod).await?;
    drop(ns);
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}
