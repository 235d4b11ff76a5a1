//! `start`: print the address of the daemon serving this container's
//! sandbox, forking one if none runs yet. Runs before any async runtime
//! exists, so forking is safe.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::bootstrap::{self, Bootstrap};
use super::flags::{self, Flags};
use anyhow::{bail, Context};

/// The daemon finds its listening socket at this descriptor.
pub const LISTENER_FD: i32 = 3;

pub fn run(flags: &Flags) -> anyhow::Result<()> {
    // Bootstrap params (containerd 2.3+) or runtime options (≤ 2.2) may be
    // on stdin. The bootstrap's values win over flags and environment;
    // the runtime options also arrive with Create, so they are dropped here.
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let mut flags = flags.clone();
    let boot = bootstrap::apply(&stdin, &mut flags);
    let flags = &flags;

    let bundle = std::env::current_dir().context("bundle directory")?;
    let sandbox_id = super::sandbox_id_of(&bundle, &flags.id);
    let address = match boot.as_ref().and_then(|b| b.socket_dir.as_deref()) {
        Some(dir) => flags::socket_address_in(dir, &flags.address, &flags.namespace, &sandbox_id),
        None => flags::socket_address(&flags.address, &flags.namespace, &sandbox_id),
    };
    let path = address
        .strip_prefix("unix://")
        .unwrap_or(&address)
        .to_owned();

    if UnixStream::connect(&path).is_err() {
        spawn_daemon(flags, boot.as_ref(), &sandbox_id, &address, &path)?;
    }
    std::fs::write(bundle.join("address"), &address).context("writing address file")?;
    // A containerd that bootstraps reads the JSON reply (it announces
    // MAX_SHIM_VERSION too; assume 2 if it did not).
    let max = std::env::var("MAX_SHIM_VERSION")
        .ok()
        .or_else(|| boot.as_ref().map(|_| "2".to_owned()));
    let reply = reply_for(&address, max.as_deref());
    let mut out = std::io::stdout();
    out.write_all(reply.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// containerd 1.6 reads a plain address; newer ones announce the highest
/// task API they speak in MAX_SHIM_VERSION and accept the JSON form. The
/// daemon serves both task.v2 and task.v3.
fn reply_for(address: &str, max_shim_version: Option<&str>) -> String {
    match max_shim_version.and_then(|v| v.trim().parse::<u32>().ok()) {
        Some(v) if v >= 2 => serde_json::json!({
            "version": v.min(3),
            "address": address,
            "protocol": "ttrpc",
        })
        .to_string(),
        _ => address.to_owned(),
    }
}

fn spawn_daemon(
    flags: &Flags,
    boot: Option<&Bootstrap>,
    sandbox_id: &str,
    address: &str,
    path: &str,
) -> anyhow::Result<()> {
    let p = Path::new(path);
    if p.exists() {
        std::fs::remove_file(p).with_context(|| format!("removing stale socket {path}"))?;
    }
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = UnixListener::bind(p).with_context(|| format!("binding {path}"))?;
    // containerd's Task API for this pod: root's alone, whatever the umask.
    std::fs::set_permissions(
        p,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .with_context(|| format!("chmod {path}"))?;
    let fd = listener.as_raw_fd();
    let exe = std::env::current_exe().context("locating own binary")?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &flags.namespace,
        "-id",
        sandbox_id,
        "-address",
        &flags.address,
    ])
    .args(["-publish-binary", &flags.publish_binary, "-socket", address])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if flags.debug {
        cmd.arg("-debug");
    }
    if let Some(b) = boot {
        // The daemon reads containerd's event address from TTRPC_ADDRESS;
        // a bootstrap's value wins over the (deprecated) variable.
        if !b.ttrpc_address.is_empty() {
            cmd.env("TTRPC_ADDRESS", &b.ttrpc_address);
        }
        // The runtime's ConfigPath, for a pod whose first request carries
        // no options (the Sandbox API's CreateSandbox).
        if let Some(p) = &b.config_path {
            cmd.env(crate::config::BOOTSTRAP_CONFIG_ENV, p);
        }
    }
    // SAFETY: only async-signal-safe calls (setsid, dup2, fcntl) run between
    // fork and exec; this process is single-threaded at this point.
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own: the daemon outlives containerd's start call.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == LISTENER_FD {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("spawning shim daemon")?;
    drop(listener);
    if child.id() == 0 {
        bail!("daemon has no pid");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_matches_containerd_version() {
        assert_eq!(reply_for("unix:///s", None), "unix:///s");
        assert_eq!(reply_for("unix:///s", Some("junk")), "unix:///s");
        let v: serde_json::Value =
            serde_json::from_str(&reply_for("unix:///s", Some("3"))).expect("json");
        assert_eq!(v["version"], 3);
        assert_eq!(v["protocol"], "ttrpc");
        let v: serde_json::Value =
            serde_json::from_str(&reply_for("unix:///s", Some("9"))).expect("json");
        assert_eq!(v["version"], 3);
    }
}
