//! The one error type of the guest agent.

use std::io;

/// Everything that can go wrong in the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// I/O on the xenbus device / socket, a pipe, a file or a syscall.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// xenstored answered a request with an error (`ENOENT`, `EACCES`, `E2BIG`, ...).
    #[error("xenstore {op} {path}: {errno}")]
    Xenstore {
        op: &'static str,
        path: String,
        errno: String,
    },
    /// A malformed xenbus message (bad header, unexpected reply type, non-UTF-8 value).
    #[error("xenbus protocol: {0}")]
    Protocol(String),
    /// A host → guest key is missing or invalid.
    #[error("bad {key}: {why}")]
    BadKey { key: String, why: String },
    /// The host wrote a protocol version this agent does not speak.
    #[error("unsupported protocol version {0:?} (this agent speaks 1)")]
    Version(String),
    /// JSON (de)serialisation.
    #[error("json {context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// The store was closed (the fake's way of ending a test; the device never closes).
    #[error("xenstore connection closed")]
    Closed,
}

impl AgentError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, AgentError>;
