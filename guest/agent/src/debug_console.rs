//! The debug console: a shell in the VM, outside every container, for an
//! operator (`containerd-shim-kata-v2 console SANDBOX-ID`). Served only when
//! the kernel command line has `agent.debug_console_vport=<port>` (upstream
//! Kata's parameter; the shim sets it, port 1026, when the configuration has
//! `[agent.kata] debug_console_enabled = true`), so a default sandbox has no
//! such door.
//!
//! Each connection gets its own `/bin/sh` (busybox in the guest image) in a
//! session of its own, with the connection as stdin, stdout and stderr (no
//! terminal: no prompt, no job control). The shell ends when the operator
//! closes the connection; PID 1's reaper collects it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{accept4, SockFlag};

/// The shell the console runs.
pub const SHELL: &str = "/bin/sh";
/// How long bind is retried (the vsock transport may still be coming up).
const BIND_ATTEMPTS: u32 = 1000;

/// The port `agent.debug_console_vport=` asks for, if any.
pub fn vport_of(cmdline: &str) -> Option<u32> {
    crate::init::cmdline_param(cmdline, "agent.debug_console_vport")?
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Serves the console on `port` from a thread of its own.
pub fn start(port: u32) {
    let spawned = std::thread::Builder::new()
        .name("debug-console".into())
        .spawn(move || serve(port));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "debug console thread");
    }
}

fn serve(port: u32) {
    let mut attempt = 0;
    let fd = loop {
        match crate::logsink::listener(port) {
            Ok(fd) => break fd,
            Err(e) if attempt >= BIND_ATTEMPTS => {
                tracing::error!(port, error = %e, "debug console: bind failed");
                return;
            }
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    tracing::warn!(
        port,
        "debug console enabled: a root shell is served on this vsock port"
    );
    loop {
        let conn = match accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
            Ok(raw) => unsafe { OwnedFd::from_raw_fd(raw) },
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "debug console: accept");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match shell(conn) {
            Ok(pid) => tracing::info!(pid, "debug console: shell started"),
            Err(e) => tracing::warn!(error = %e, "debug console: starting {SHELL}"),
        }
    }
}

/// Starts a shell on `conn`; the reaper collects it when it exits.
fn shell(conn: OwnedFd) -> std::io::Result<u32> {
    let stdin = conn.try_clone()?;
    let stdout = conn.try_clone()?;
    let mut cmd = Command::new(SHELL);
    cmd.stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(conn))
        .env_clear()
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .env("HOME", "/")
        .env("TERM", "dumb")
        .current_dir("/");
    // SAFETY: only setsid(2), async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    // Not waited for here: PID 1's reaper owns every child's exit.
    let child = cmd.spawn()?;
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_comes_from_the_kernel_command_line() {
        assert_eq!(
            vport_of("console=ttyS0 agent.debug_console agent.debug_console_vport=1026"),
            Some(1026)
        );
        assert_eq!(vport_of("console=ttyS0 agent.debug_console"), None);
        assert_eq!(vport_of("agent.debug_console_vport=0"), None);
        assert_eq!(vport_of("agent.debug_console_vport=x"), None);
    }
}
