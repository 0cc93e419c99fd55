//! The crate's one error type.

use std::path::PathBuf;

/// Errors of the NBD server, its configuration and its backing stores.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "invalid size {0:?}: expected bytes with an optional K/M/G/T suffix (powers of 1024), or 'auto'"
    )]
    BadSize(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    ConfigParse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("no CUDA device: {0}")]
    NoCuda(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("cannot bind {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
