//! The one error type of the shim, and its mapping onto gRPC status codes.

use std::path::PathBuf;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("upstream CRI runtime at {endpoint} is unavailable: {message}")]
    UpstreamUnavailable { endpoint: String, message: String },
    #[error(
        "no upstream CRI runtime is configured (--upstream); handler {handler:?} cannot be served"
    )]
    NoUpstream { handler: String },
    #[error("hypervisor: {0}")]
    Hypervisor(String),
    #[error("apiserver: {0}")]
    ApiServer(String),
    #[error("`{command}` failed (exit {status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("xenstore {op} {path}: {source}")]
    XenStore {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("guest agent of domain {domain}: {message}")]
    Guest { domain: String, message: String },
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
    #[error("image {reference}: {message}")]
    Image { reference: String, message: String },
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
}

pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ShimError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        ShimError::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ShimError::Config(_) | ShimError::InvalidArgument(_) => Code::InvalidArgument,
            ShimError::NotFound { .. } => Code::NotFound,
            ShimError::FailedPrecondition(_) => Code::FailedPrecondition,
            ShimError::Unimplemented(_) => Code::Unimplemented,
            ShimError::UpstreamUnavailable { .. } | ShimError::NoUpstream { .. } => {
                Code::Unavailable
            }
            ShimError::Timeout { .. } => Code::DeadlineExceeded,
            ShimError::ApiServer(_) => Code::Unavailable,
            ShimError::Image { .. } | ShimError::Registry { .. } => Code::Unknown,
            _ => Code::Internal,
        }
    }
}

impl From<ShimError> for Status {
    fn from(e: ShimError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
