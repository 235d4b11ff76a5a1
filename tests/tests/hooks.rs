//! OCI hooks of a container's spec, run on the host by the shim, through
//! containerd (`ctr run --config SPEC`): real containerd, real VM.
//!
//! `ctr run --config` sends no rootfs mounts, so the shim takes the
//! bundle's `rootfs` directory; the createRuntime hook fills it (bind-mounts
//! a busybox tree there), which also shows it ran before the rootfs was
//! taken, as a hook that prepares the container must.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use integration_tests::{assert_no_leftovers, require_vm, Containerd, RUNTIME};

/// A minimal busybox root on the host.
fn busybox_root(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("bbroot");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
    for applet in ["sh", "echo", "cat"] {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    Ok(root)
}

/// A hook running `script` with /bin/sh; `$STATE` holds its stdin.
fn hook(script: &str) -> serde_json::Value {
    serde_json::json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("STATE=$(cat); {script}")],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "timeout": 20
    })
}

/// `ctr oci spec` with our process and hooks.
fn write_spec(dir: &Path, hooks: serde_json::Value) -> Result<PathBuf> {
    let out = std::process::Command::new("ctr")
        .args(["oci", "spec"])
        .output()
        .context("ctr oci spec")?;
    let mut spec: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    spec["process"]["args"] = serde_json::json!(["sh", "-c", "echo hooked-container"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["hooks"] = hooks;
    let path = dir.join("spec.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(path)
}

/// The bundle from a state JSON (sed: the hooks have no JSON tool).
const BUNDLE: &str = r#"B=$(echo "$STATE" | sed -n 's/.*"bundle":"\([^"]*\)".*/\1/p')"#;

fn state(dir: &Path, name: &str) -> Result<serde_json::Value> {
    let path = dir.join(format!("{name}.json"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("{name} hook did not run"))?;
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn hooks_run_on_the_host_with_the_state_at_each_phase() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let dir = ctd.dir.join("hooks");
    std::fs::create_dir_all(&dir)?;
    let root = busybox_root(&dir)?;
    let d = dir.display();
    let save = |n: &str| {
        hook(&format!(
            "echo \"$STATE\" > {d}/{n}.json; echo {n} >> {d}/order"
        ))
    };
    let spec = write_spec(
        &dir,
        serde_json::json!({
            "prestart": [save("prestart")],
            "createRuntime": [
                save("createRuntime"),
                hook(&format!("{BUNDLE}; mount --bind {} $B/rootfs", root.display()))
            ],
            "createContainer": [save("createContainer")],
            "poststart": [save("poststart")],
            "poststop": [save("poststop"), hook("exit 1")]
        }),
    )?;
    let spec = spec.to_string_lossy().into_owned();
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--config",
        &spec,
        "hooked",
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("hooked-container"),
        "ctr run: {}{stdout}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        ctd.log()
    );
    let order = std::fs::read_to_string(dir.join("order"))?;
    assert_eq!(
        order, "prestart\ncreateRuntime\ncreateContainer\npoststart\npoststop\n",
        "every phase once, in order (a failing poststop hook is only logged)"
    );
    for (name, status) in [
        ("prestart", "creating"),
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let s = state(&dir, name)?;
        assert_eq!(s["id"], "hooked", "{name}: {s}");
        assert_eq!(s["status"], status, "{name}: {s}");
        assert!(s["pid"].as_u64().unwrap_or(0) > 0, "{name}: {s}");
        let bundle = s["bundle"].as_str().unwrap_or_default();
        assert!(
            bundle.ends_with("/hooked") && bundle.starts_with(&ctd.dir.to_string_lossy()[..]),
            "{name}: bundle {bundle}"
        );
    }
    assert_no_leftovers(ctd);
    Ok(())
}

#[test]
fn a_failing_hook_fails_create_clearly_and_leaves_nothing() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let dir = ctd.dir.join("hooks-fail");
    std::fs::create_dir_all(&dir)?;
    let spec = write_spec(
        &dir,
        serde_json::json!({
            "createRuntime": [hook("echo the hook says no >&2; exit 7")],
            "poststart": [hook(&format!("touch {}/poststart", dir.display()))]
        }),
    )?;
    let spec = spec.to_string_lossy().into_owned();
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--config",
        &spec,
        "refused",
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ctr run succeeded despite the hook");
    assert!(
        stderr.contains("createRuntime hook /bin/sh failed")
            && stderr.contains("exit status: 7")
            && stderr.contains("the hook says no"),
        "the error names the hook, its status and its output: {stderr}"
    );
    assert!(!dir.join("poststart").exists());
    // Nothing of the container is left: containerd deletes it, no VM ran.
    let _ = ctd.ctr(&["containers", "rm", "refused"]);
    assert_no_leftovers(ctd);
    Ok(())
}
