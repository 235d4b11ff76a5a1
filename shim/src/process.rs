//! Process state: the init process of a container or an exec. Its state
//! machine is created → running → stopped; Wait subscribes to it.

use protocols::containerd::api::Status;
use protocols::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::{watch, Notify};

/// containerd's stdio paths (fifos) for a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProcessState {
    Created,
    Running,
    Stopped {
        exit_status: u32,
        exited_at: Timestamp,
    },
}

impl ProcessState {
    pub fn status(&self) -> Status {
        match self {
            ProcessState::Created => Status::CREATED,
            ProcessState::Running => Status::RUNNING,
            ProcessState::Stopped { .. } => Status::STOPPED,
        }
    }
}

/// One process the shim tracks (init or exec).
#[derive(Debug)]
pub struct Process {
    pub stdio: Stdio,
    state: watch::Sender<ProcessState>,
    /// CloseIO: the stdin copier forwards what is buffered, then closes
    /// the process's stdin in the guest.
    pub stdin_closed: Notify,
    /// For an exec: the process the agent is asked to start.
    pub exec_spec: Option<protocols::oci::Process>,
}

impl Process {
    pub fn new(stdio: Stdio) -> Self {
        Self {
            stdio,
            state: watch::Sender::new(ProcessState::Created),
            stdin_closed: Notify::new(),
            exec_spec: None,
        }
    }

    pub fn new_exec(stdio: Stdio, spec: protocols::oci::Process) -> Self {
        Self {
            exec_spec: Some(spec),
            ..Self::new(stdio)
        }
    }

    pub fn state(&self) -> ProcessState {
        self.state.borrow().clone()
    }

    /// created → running; refused from any other state.
    pub fn set_running(&self) -> bool {
        self.state.send_if_modified(|s| {
            if *s == ProcessState::Created {
                *s = ProcessState::Running;
                true
            } else {
                false
            }
        })
    }

    /// Records the exit once; later calls keep the first status.
    pub fn set_exited(&self, exit_status: u32) -> bool {
        self.state.send_if_modified(|s| {
            if matches!(s, ProcessState::Stopped { .. }) {
                false
            } else {
                *s = ProcessState::Stopped {
                    exit_status,
                    exited_at: Timestamp::now(),
                };
                true
            }
        })
    }

    /// Resolves when the process has stopped, with its status and time.
    pub async fn wait(&self) -> (u32, Timestamp) {
        let mut rx = self.state.subscribe();
        loop {
            if let ProcessState::Stopped {
                exit_status,
                exited_at,
            } = &*rx.borrow_and_update()
            {
                return (*exit_status, exited_at.clone());
            }
            if rx.changed().await.is_err() {
                return (255, Timestamp::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_created_running_stopped() {
        let p = Process::new(Stdio::default());
        assert_eq!(p.state().status(), Status::CREATED);
        assert!(p.set_running());
        assert!(!p.set_running(), "running twice is refused");
        let waiter = {
            let p = std::sync::Arc::new(p);
            let p2 = p.clone();
            (tokio::spawn(async move { p2.wait().await }), p)
        };
        assert!(waiter.1.set_exited(7));
        assert!(!waiter.1.set_exited(9), "first exit status wins");
        let (status, _) = waiter.0.await.expect("join");
        assert_eq!(status, 7);
        assert_eq!(waiter.1.state().status(), Status::STOPPED);
    }
}
