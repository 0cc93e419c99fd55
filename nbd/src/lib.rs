//! `tessera-nbd`: an NBD server (newstyle, fixed handshake, structured replies) that exports a
//! byte store over unix sockets and loopback TCP. Stores: sparse host memory, and GPU memory
//! through cudarc (feature `cuda`). Used by `tessera-gpu-proxy nbd`; see README.md.

pub mod backend;
pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod proto;
pub mod server;
mod sys;

pub use backend::{Backend, HostMemory, StoreError};
pub use config::{BackendKind, FileConfig, Settings, SizeSpec};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use server::{Server, Shared};
