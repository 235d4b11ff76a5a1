//! The shim's typed errors and their mapping to ttrpc codes at the service edge.

use protocols::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hypervisor: {0}")]
    Hypervisor(#[from] hypervisor::Error),
    #[error("{0}")]
    Agent(#[from] agent_client::Error),
    #[error("pod network: {0}")]
    Network(#[from] crate::network::NetworkError),
    #[error("host cgroup: {0}")]
    HostCgroup(#[from] crate::host_cgroup::CgroupError),
    #[error("OCI hook: {0}")]
    Hook(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::InvalidArgument(_) | Error::Config(_) => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            Error::Hypervisor(h) => hypervisor_code(h),
            Error::HostCgroup(crate::host_cgroup::CgroupError::InvalidPath(_)) => {
                Code::INVALID_ARGUMENT
            }
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Code::NOT_FOUND
            }
            // Keep the agent's own code (NotFound, InvalidArgument, ...) so
            // containerd sees what the guest said.
            Error::Agent(agent_client::Error::Rpc(ttrpc::Error::RpcStatus(s))) => s.code(),
            _ => Code::INTERNAL,
        }
    }
}

/// What containerd should make of a hypervisor failure: a bad configuration
/// is the caller's, a timeout is a deadline, a missing capability is
/// UNIMPLEMENTED; everything else (QEMU's own errors included) is INTERNAL.
fn hypervisor_code(e: &hypervisor::Error) -> Code {
    use hypervisor::Error as H;
    match e {
        H::InvalidConfig(_) => Code::INVALID_ARGUMENT,
        H::Timeout { .. } | H::StartTimeout { .. } => Code::DEADLINE_EXCEEDED,
        H::Unsupported(_) => Code::UNIMPLEMENTED,
        H::Io { .. }
        | H::Qmp { .. }
        | H::QmpClosed
        | H::QmpProtocol(_)
        | H::HotplugRejected { .. }
        | H::NotRunning(_)
        | H::Internal(_)
        | H::Exited
        | H::ProcessExited { .. } => Code::INTERNAL,
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status containerd receives for `e`.
    fn status_of(e: Error) -> ttrpc::Status {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s,
            other => panic!("not a status: {other:?}"),
        }
    }

    fn code_of(e: Error) -> Code {
        status_of(e).code()
    }

    #[test]
    fn maps_kinds_to_codes() {
        assert_eq!(code_of(Error::NotFound("c1".into())), Code::NOT_FOUND);
        assert_eq!(
            code_of(Error::InvalidArgument("x".into())),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            code_of(Error::AlreadyExists("x".into())),
            Code::ALREADY_EXISTS
        );
        assert_eq!(
            code_of(Error::Hypervisor(hypervisor::Error::InvalidConfig(
                "kernel".into()
            ))),
            Code::INVALID_ARGUMENT
        );
        let agent = ttrpc::Error::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "no such"));
        assert_eq!(code_of(Error::Agent(agent.into())), Code::NOT_FOUND);
    }

    #[test]
    fn hypervisor_failures_keep_their_kind() {
        use std::time::Duration;
        let timeout = hypervisor::Error::Timeout {
            what: "waiting for QEMU's QMP answer".into(),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(code_of(timeout.into()), Code::DEADLINE_EXCEEDED);
        let unsupported = hypervisor::Error::Unsupported("memory hotplug");
        assert_eq!(code_of(unsupported.into()), Code::UNIMPLEMENTED);
        let qemu_said = hypervisor::Error::Qmp {
            command: "device_add".into(),
            class: "GenericError".into(),
            desc: "Duplicate device ID 'dimm0'".into(),
        };
        let status = status_of(qemu_said.into());
        assert_eq!(status.code(), Code::INTERNAL);
        // What ctr prints: QEMU's class and description, no Rust structure.
        assert_eq!(
            status.message(),
            "hypervisor: QMP device_add: GenericError: Duplicate device ID 'dimm0'"
        );
        let internal = hypervisor::Error::Internal("no QMP session");
        assert_eq!(code_of(internal.into()), Code::INTERNAL);
    }

    /// An agent status reaches containerd with its code kept and a message a
    /// person can read: `agent: CODE: text`, not ttrpc's `Status { .. }` dump.
    #[test]
    fn agent_status_reads_as_a_message() {
        let agent =
            agent_client::Error::status(Code::FAILED_PRECONDITION, "container c1 is not running");
        let status = status_of(Error::Agent(agent));
        assert_eq!(status.code(), Code::FAILED_PRECONDITION);
        assert_eq!(
            status.message(),
            "agent: FAILED_PRECONDITION: container c1 is not running"
        );
    }
}
