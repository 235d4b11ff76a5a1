use super::supervise::EVENTS_DRAIN_GRACE;
use super::*;

/// QEMU's exit after GUEST_PANICKED names the panic; without one (the
/// event watcher ends) it is the plain exit, without waiting out the grace.
#[tokio::test]
async fn exit_after_a_panic_names_it() {
    for panicked in [true, false] {
        let (qemu_tx, qemu_rx) = watch::channel(None);
        let (panic_tx, panic_rx) = watch::channel(None);
        let mut any = watch_any_exit(qemu_rx, panic_rx, std::iter::empty());
        if panicked {
            panic_tx.send_replace(Some("poweroff".to_string()));
        }
        drop(panic_tx);
        qemu_tx.send_replace(Some("qemu (pid 1) exited: exit status: 1".to_string()));
        let t = Instant::now();
        let desc = tokio::time::timeout(Duration::from_secs(2), any.wait_for(Option::is_some))
            .await
            .expect("published")
            .expect("open")
            .clone()
            .unwrap_or_default();
        assert!(t.elapsed() < EVENTS_DRAIN_GRACE, "{:?}", t.elapsed());
        assert_eq!(
            desc.starts_with("guest kernel panicked (QEMU action: poweroff); qemu"),
            panicked,
            "{desc}"
        );
    }
}

#[tokio::test]
async fn invalid_config_spawns_nothing() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut c = crate::config::tests::valid_config(d.path());
    c.memory_mib = 64;
    let e = Qemu::new()
        .launch(c.clone(), &VmOptions::default())
        .await
        .map(|_| ())
        .expect_err("invalid");
    assert!(
        matches!(e, Error::InvalidConfig(ref m) if m.contains("memory_mib")),
        "{e}"
    );
    assert!(!c.run_dir.exists(), "run dir must not be created");
}

/// A "QEMU" that exits at once: launch fails with its output and leaves nothing.
#[tokio::test]
async fn qemu_exiting_early_is_reported_and_cleaned_up() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut c = crate::config::tests::valid_config(d.path());
    let script = |name: &str, body: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(
            &p,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .expect("chmod");
        p
    };
    // Helpers: create the socket path they are told about, then stay up.
    c.virtiofsd_path = script("virtiofsd", "touch \"$2\"; exec sleep 30");
    c.vhost_device_vsock_path = script("vdv", "touch \"$4\"; exec sleep 30");
    c.qemu_path = script("qemu", "echo 'qemu: bad option' >&2; exit 1");
    let e = Qemu::new()
        .launch(c.clone(), &VmOptions::default())
        .await
        .map(|_| ())
        .expect_err("qemu fails");
    let msg = e.to_string();
    assert!(matches!(e, Error::ProcessExited { .. }), "{msg}");
    assert!(msg.contains("bad option"), "{msg}");
    assert!(!c.run_dir.exists(), "run dir removed");
}
