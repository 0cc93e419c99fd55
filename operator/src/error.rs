use thiserror::Error;

/// Errors of the operator's controllers.
#[derive(Debug, Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    #[error("allocation ledger of node {node}: {message}")]
    Ledger { node: String, message: String },
    #[error("conflicting writes to node {0}'s allocation ledger; retrying")]
    Conflict(String),
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    #[error("waiting: {0}")]
    Waiting(String),
    #[error("metrics/health server: {0}")]
    Server(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Invalid { .. } => "invalid",
            Error::Ledger { .. } => "ledger",
            Error::Conflict(_) => "conflict",
            Error::Json(_) => "json",
            Error::Server(_) => "server",
            Error::Waiting(_) => "waiting",
        }
    }
}
