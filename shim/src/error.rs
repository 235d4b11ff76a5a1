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
            Error::Hypervisor(hypervisor::Error::InvalidConfig(_)) => Code::INVALID_ARGUMENT,
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

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(e: Error) -> Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
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
}
