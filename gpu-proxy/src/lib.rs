//! `tessera-gpu-proxy`: owns the GPU and executes CUDA driver calls forwarded over IDM by the
//! stand-in `libcuda.so.1`, one isolated session per tenant.
//!
//! - [`executor`]: the [`executor::CudaExecutor`] trait; [`cuda`] implements it with the real
//!   driver (loaded at run time), [`double`] in memory for logic tests;
//! - [`session`]: per-tenant state and call validation (handles, pointer ranges, quota, scrub,
//!   compute share); [`handles`], [`alloc`], [`throttle`] hold the pieces;
//! - [`server`], [`serve_cmd`]: connections and the `serve` subcommand; [`metrics`]: `/metrics`.

pub mod alloc;
pub mod cuda;
pub mod double;
pub mod error;
pub mod executor;
pub mod handles;
pub mod metrics;
/// The `nbd` subcommand (issue 9: VRAM block device).
pub mod nbd_cmd;
pub mod serve_cmd;
pub mod server;
pub mod session;
pub mod throttle;

pub use error::{ProxyError, Result};
