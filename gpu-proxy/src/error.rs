//! The one error type of `tessera-gpu-proxy`.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProxyError {
    /// IDM framing or transport failure.
    #[error(transparent)]
    Idm(#[from] tessera_idm::IdmError),
    /// A CUDA driver call failed at start-up (during serving, errors go back to the tenant).
    #[error("{call} failed with CUresult {code}")]
    Cuda { call: &'static str, code: u32 },
    /// The CUDA driver library cannot be loaded on this host.
    #[error("no CUDA driver: {0}")]
    NoDriver(String),
    /// Bad command-line or configuration value.
    #[error("configuration: {0}")]
    Config(String),
    /// Operating-system I/O.
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, ProxyError>;
