//! What containers expect of the guest kernel, through CRI on a real VM:
//! a NET_ADMIN container makes a bridge (busybox's brctl) and a firewall
//! rule that takes effect (iptables, nft backend and legacy), and finds the
//! cgroup v1 cpuacct controller.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use integration_tests::cri::assert_no_leftovers;
use integration_tests::cri::{self, Cri};
use integration_tests::{require_vm, Containerd};
use k8s_cri::v1 as api;

const NETADMIN_IMAGE: &str = "docker.io/library/kata-netadmin:latest";

async fn setup() -> Result<(Containerd, Cri)> {
    let ctd = tokio::task::spawn_blocking(|| -> Result<Containerd> {
        let ctd = Containerd::start_cri()?;
        let tar = ctd.dir.join("netadmin.tar");
        ctd.build_image("netadmin-image.sh", &tar, NETADMIN_IMAGE)?;
        ctd.import_image(cri::NAMESPACE, &tar)?;
        Ok(ctd)
    })
    .await??;
    cri::connect(ctd).await
}

/// ExecSync that returns (exit code, stdout + stderr).
async fn sh(c: &mut Cri, id: &str, script: &str) -> Result<(i32, String)> {
    let r = c
        .exec_sync(id, &["sh", "-c", script], 60)
        .await
        .with_context(|| format!("ExecSync {script}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    Ok((r.exit_code, text))
}

async fn sh_ok(c: &mut Cri, id: &str, script: &str) -> Result<String> {
    let (code, text) = sh(c, id, script).await?;
    if code != 0 {
        bail!("{script:?} exited {code}: {text}");
    }
    Ok(text)
}

/// A page request to the container's own server; true if it was answered.
async fn served(c: &mut Cri, id: &str) -> Result<bool> {
    let (_, text) = sh(
        c,
        id,
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 8080",
    )
    .await?;
    Ok(text.contains("served"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_net_admin_container_makes_bridges_and_firewall_rules() -> Result<()> {
    require_vm!();
    let (ctd, mut c) = setup().await?;
    let pod_cfg = c.pod_config("netadmin");
    let pod = c.run_pod(&pod_cfg).await.with_context(|| ctd.log())?;
    let mut cfg = Cri::container_config(
        "netadmin",
        NETADMIN_IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo served > /tmp/www/index.html && \
             exec httpd -f -p 8080 -h /tmp/www",
        ],
    );
    let linux = cfg.linux.get_or_insert_with(Default::default);
    linux
        .security_context
        .get_or_insert_with(Default::default)
        .capabilities = Some(api::Capability {
        add_capabilities: vec!["NET_ADMIN".into(), "NET_RAW".into()],
        ..Default::default()
    });
    let id = c.run_container(&pod, &cfg, &pod_cfg).await?;

    // A bridge with a dummy port (failed before with "Package not installed");
    // busybox's brctl has no `show`: the bridge's ports are in sysfs.
    let br = sh_ok(
        &mut c,
        &id,
        "brctl addbr kbr0 && ip link add kd0 type dummy && brctl addif kbr0 kd0 && \
         ip link set kbr0 up && echo kbr0 && ls /sys/class/net/kbr0/brif",
    )
    .await?;
    assert!(br.contains("kbr0") && br.contains("kd0"), "{br}");

    let mut answered = false;
    for _ in 0..30 {
        if served(&mut c, &id).await? {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(answered, "the server answers before any rule");
    // nft-backed iptables: the rule is listed and takes effect.
    let rules = sh_ok(
        &mut c,
        &id,
        "iptables -I INPUT -p tcp --dport 8080 -j REJECT --reject-with tcp-reset && \
         iptables -S INPUT",
    )
    .await?;
    assert!(
        rules.contains("--dport 8080") && rules.contains("REJECT"),
        "{rules}"
    );
    assert!(
        !served(&mut c, &id).await?,
        "the REJECT rule blocks the server"
    );
    sh_ok(&mut c, &id, "iptables -D INPUT 1").await?;
    assert!(served(&mut c, &id).await?, "served again without the rule");
    // The legacy (x_tables) backend too, and NAT.
    let legacy = sh_ok(
        &mut c,
        &id,
        "iptables-legacy -t nat -A OUTPUT -p tcp --dport 9090 -j REDIRECT --to-ports 8080 && \
         iptables-legacy -t nat -S OUTPUT",
    )
    .await?;
    assert!(legacy.contains("REDIRECT"), "{legacy}");
    let (_, page) = sh(
        &mut c,
        &id,
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 9090",
    )
    .await?;
    assert!(
        page.contains("served"),
        "port 9090 redirected to 8080: {page}"
    );
    // cgroup v1's cpuacct is in the kernel (CPU usage for v1 tools).
    let controllers = sh_ok(&mut c, &id, "cat /proc/cgroups").await?;
    assert!(
        controllers.lines().any(|l| l.starts_with("cpuacct")),
        "{controllers}"
    );

    c.remove_pod(&pod).await?;
    assert_no_leftovers(ctd, &c).await;
    Ok(())
}
