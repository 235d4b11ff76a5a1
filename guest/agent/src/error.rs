//! The agent's error type and its mapping to ttrpc status codes.
use ttrpc::Code;

/// Everything an RPC can fail with; mapped to a ttrpc status at the service edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("process {exec_id} of container {container_id} not found")]
    ProcessNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("EOF")]
    Eof,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::ContainerNotFound(_) | Error::ProcessNotFound { .. } | Error::NotFound(_) => {
                Code::NOT_FOUND
            }
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Timeout(_) => Code::DEADLINE_EXCEEDED,
            // Upstream kata answers an exhausted stream with an INTERNAL "EOF" error.
            Error::Eof | Error::Sys { .. } | Error::Io { .. } | Error::Internal(_) => {
                Code::INTERNAL
            }
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}
