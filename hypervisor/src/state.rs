//! `<run_dir>/state.json`: the pids and start times of a VM's processes, so a
//! later process (the shim's `delete` after a crash) can clean up without
//! ever killing a recycled pid.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::proc_start_time;
use crate::{Error, Result};

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` at spawn time.
    pub start_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub sandbox_id: String,
    pub processes: Vec<ProcessRecord>,
}

pub fn state_path(run_dir: &Path) -> PathBuf {
    run_dir.join(STATE_FILE)
}

/// Writes the state file atomically (temp file + rename).
pub async fn write(run_dir: &Path, state: &StateFile) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::Io {
        what: "encoding state file".into(),
        source: e.into(),
    })?;
    let tmp = run_dir.join(format!("{STATE_FILE}.tmp"));
    tokio::fs::write(&tmp, bytes).await.map_err(|e| Error::Io {
        what: format!("writing {}", tmp.display()),
        source: e,
    })?;
    let path = state_path(run_dir);
    tokio::fs::rename(&tmp, &path).await.map_err(|e| Error::Io {
        what: format!("renaming to {}", path.display()),
        source: e,
    })
}

/// Reads the state file; `Ok(None)` if it does not exist.
pub async fn read(run_dir: &Path) -> Result<Option<StateFile>> {
    let path = state_path(run_dir);
    match tokio::fs::read(&path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Io {
                what: format!("parsing {}", path.display()),
                source: e.into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            what: format!("reading {}", path.display()),
            source: e,
        }),
    }
}

/// True if `rec` still names the very process that was recorded.
fn is_same_live_process(rec: &ProcessRecord) -> bool {
    proc_start_time(rec.pid) == Some(rec.start_time)
}

/// SIGKILLs every recorded process that is still the recorded one and waits
/// (up to 5 s) until they are gone. Returns the records that were killed.
pub async fn kill_recorded(state: &StateFile, sandbox: &str) -> Vec<ProcessRecord> {
    let mut killed = Vec::new();
    for rec in &state.processes {
        if !is_same_live_process(rec) {
            continue;
        }
        let Ok(pid) = i32::try_from(rec.pid) else {
            continue;
        };
        // The recorded processes were spawned as process group leaders.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) => {
                tracing::info!(sandbox, process = %rec.name, pid = rec.pid, "killed leftover process");
                killed.push(rec.clone());
            }
            Err(e) => tracing::warn!(sandbox, process = %rec.name, pid = rec.pid, "kill: {e}"),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while killed.iter().any(is_same_live_process) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed
}

/// Removes `run_dir`; a missing directory is fine.
pub async fn remove_run_dir(run_dir: &Path) -> Result<()> {
    match tokio::fs::remove_dir_all(run_dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            what: format!("removing {}", run_dir.display()),
            source: e,
        }),
    }
}

/// See [`crate::cleanup_run_dir`].
pub async fn cleanup_run_dir(run_dir: &Path) -> Result<()> {
    match read(run_dir).await {
        Ok(Some(state)) => {
            kill_recorded(&state, &state.sandbox_id).await;
        }
        Ok(None) => {}
        // An unreadable state file must not keep the directory around forever.
        Err(e) => tracing::warn!(run_dir = %run_dir.display(), "ignoring state file: {e}"),
    }
    remove_run_dir(run_dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_cleanup_kills_only_recorded_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        tokio::fs::create_dir(&run).await.expect("mkdir");

        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let pid = live.id();
        let start_time = proc_start_time(pid).expect("start time");
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let state = StateFile {
            sandbox_id: "sb".into(),
            processes: vec![
                ProcessRecord {
                    name: "qemu".into(),
                    pid,
                    start_time,
                },
                // Same pid as `other` but a different start time: a recycled pid.
                ProcessRecord {
                    name: "virtiofsd".into(),
                    pid: other.id(),
                    start_time: 1,
                },
            ],
        };
        write(&run, &state).await.expect("write");
        assert_eq!(read(&run).await.expect("read"), Some(state));

        // Reap the killed child from a blocking thread while cleanup polls.
        let reaper = std::thread::spawn(move || live.wait());
        cleanup_run_dir(&run).await.expect("cleanup");
        assert!(!run.exists());
        let status = reaper.join().expect("join").expect("wait");
        assert!(!status.success());
        assert!(
            proc_start_time(other.id()).is_some(),
            "unrelated process survived"
        );
        other.kill().expect("kill other");
        other.wait().expect("reap other");

        // Missing dir is fine; a dir without state file is removed.
        cleanup_run_dir(&run).await.expect("missing dir ok");
        tokio::fs::create_dir(&run).await.expect("mkdir");
        cleanup_run_dir(&run).await.expect("no state ok");
        assert!(!run.exists());
    }
}
