//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `tessera-parity`.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("invalid geometry: {0}")]
    Geometry(String),
    #[error("shard lengths differ or do not match: {0}")]
    Length(String),
    #[error("matrix is singular: the surviving shards cannot reconstruct the lost ones")]
    Singular,
    #[error("too many lost shards: {lost} lost, at most {max} can be rebuilt")]
    TooManyLost { lost: usize, max: usize },
    #[error("backend {0} is not available on this CPU")]
    BackendUnavailable(&'static str),
    #[error("ISA-L: {0}")]
    Isal(String),
    #[error("{path}: {msg}")]
    Member { path: PathBuf, msg: String },
    #[error("array: {0}")]
    Array(String),
    #[error("unknown layout {0}")]
    UnknownLayout(String),
    #[error("no CUDA device: {0}")]
    NoGpu(String),
    #[error("CUDA: {0}")]
    Gpu(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ParityError {
    /// Errors caused by the input (members, arguments) rather than by the machine: exit code 2.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            ParityError::Io { .. }
                | ParityError::Isal(_)
                | ParityError::Gpu(_)
                | ParityError::NoGpu(_)
        )
    }
}
