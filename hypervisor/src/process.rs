//! Supervision of child processes: one tokio task per child owns it, waits for
//! its exit (reaping it) and kills it on request, so a pid is never signalled
//! after it was reaped.

use std::sync::Arc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::{watch, Notify};

/// One supervised child process.
#[derive(Debug)]
pub struct Supervised {
    pub name: &'static str,
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`, read right after spawning.
    pub start_time: Option<u64>,
    kill: Arc<Notify>,
    exit: watch::Receiver<Option<String>>,
}

impl Supervised {
    /// Takes ownership of `child` and starts watching it.
    pub fn new(name: &'static str, mut child: Child, sandbox: String) -> Self {
        let pid = child.id().unwrap_or(0);
        let start_time = proc_start_time(pid);
        let kill = Arc::new(Notify::new());
        let (tx, rx) = watch::channel(None);
        let kill_rx = kill.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                () = kill_rx.notified() => {
                    // Its process group too (spawned as a group leader): a
                    // wrapper's children must not outlive it. The child is not
                    // reaped yet, so the group id cannot name anything else.
                    if let Ok(p) = i32::try_from(pid) {
                        let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
                    }
                    if let Err(e) = child.start_kill() {
                        tracing::debug!(sandbox = %sandbox, process = name, "kill: {e}");
                    }
                    child.wait().await
                }
            };
            let desc = match status {
                Ok(s) => format!("{name} (pid {pid}) exited: {s}"),
                Err(e) => format!("{name} (pid {pid}) could not be waited for: {e}"),
            };
            tracing::info!(sandbox = %sandbox, process = name, pid, "{desc}");
            let _ = tx.send(Some(desc));
        });
        Supervised {
            name,
            pid,
            start_time,
            kill,
            exit: rx,
        }
    }

    /// Sends SIGKILL unless the process is already gone.
    pub fn kill(&self) {
        self.kill.notify_one();
    }

    /// A receiver that turns `Some(description)` once the process has exited.
    pub fn exit_watch(&self) -> watch::Receiver<Option<String>> {
        self.exit.clone()
    }

    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Resolves once the process has exited and was reaped; returns how it ended.
    pub async fn wait(&self) -> String {
        let mut rx = self.exit.clone();
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_default(),
            Err(_) => format!("{} (pid {}) supervisor gone", self.name, self.pid),
        };
        result
    }

    /// Kills the process and waits until it is reaped.
    pub async fn kill_and_wait(&self) -> String {
        if !self.has_exited() {
            self.kill();
        }
        self.wait().await
    }
}

/// Parses field 22 (start time in clock ticks since boot) of a `/proc/<pid>/stat`
/// line; `None` for a zombie or dead process or malformed input.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 is fields[19].
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | Some(&"x")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Start time of a live process, `None` if it is gone or a zombie.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn parses_stat_lines() {
        let line = "1234 (qemu (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 98765 1000 10 18446744073709551615";
        assert_eq!(parse_start_time(line), Some(98765));
        let zombie = line.replace(") S 1", ") Z 1");
        assert_eq!(parse_start_time(&zombie), None);
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (a) S 1"), None);
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(proc_start_time(std::process::id()).is_some());
        assert_eq!(proc_start_time(0), None);
    }

    #[tokio::test]
    async fn kill_and_detect_exit() {
        let child = tokio::process::Command::new("sleep")
            .arg("30")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sleep");
        let s = Supervised::new("sleep", child, "sb".into());
        assert!(s.start_time.is_some());
        assert!(!s.has_exited());
        let desc = tokio::time::timeout(Duration::from_secs(5), s.kill_and_wait())
            .await
            .expect("killed in time");
        assert!(desc.contains("signal: 9"), "{desc}");
        assert!(s.has_exited());
        assert!(s.exit_watch().borrow().is_some());
        // Killing an exited process is a no-op.
        assert_eq!(s.kill_and_wait().await, desc);
    }
}
