//! What a container's setup in the helper process can fail with. The helper
//! sends the message to the agent, which answers CreateContainer or
//! ExecProcess with it; the variants keep the cause a test can match on.

use std::fmt::Display;

use super::seccomp::SeccompError;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A system call or file operation of one step failed.
    #[error("{step}: {source}")]
    Os {
        step: String,
        #[source]
        source: std::io::Error,
    },
    /// The agent's frames on the sync socket were not what the protocol says.
    #[error("{0}")]
    Protocol(String),
    /// The spec asks for something this runtime cannot do.
    #[error("{0}")]
    Spec(String),
    #[error("exec {0}: not found in PATH")]
    NotInPath(String),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

pub type Res<T> = std::result::Result<T, StepError>;

/// `map_err` for one step: the step's name and the OS error.
pub fn err<E: Into<std::io::Error>>(step: impl Display) -> impl FnOnce(E) -> StepError {
    move |e| StepError::Os {
        step: step.to_string(),
        source: e.into(),
    }
}

/// The step failed with `errno` (after a raw libc call).
pub fn last_os(step: impl Display) -> StepError {
    err(step)(std::io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_step_and_the_cause() {
        let e = err("setuid")(nix::Error::EPERM);
        assert!(
            matches!(&e, StepError::Os { source, .. } if source.raw_os_error() == Some(libc::EPERM))
        );
        assert_eq!(
            e.to_string(),
            "setuid: Operation not permitted (os error 1)"
        );
        assert_eq!(
            StepError::NotInPath("sh".into()).to_string(),
            "exec sh: not found in PATH"
        );
    }
}
