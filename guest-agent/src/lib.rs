//! `tessera-guest-agent`: the guest side of vGPU forwarding. Built as a cdylib, this crate *is*
//! the stand-in `libcuda.so.1`: it exports the CUDA driver API functions that CUDA clients need
//! and forwards each call over IDM to `tessera-gpu-proxy` (socket from `TESSERA_IDM_SOCKET`).
//!
//! - [`exports`]: the `extern "C"` functions with the driver ABI;
//! - [`procaddr`]: `cuGetProcAddress(_v2)` with versioned variants and logged NOT_SUPPORTED
//!   trampolines for the rest;
//! - [`conn`]: the connection and the memfd bulk area; [`image`]: module image sizes;
//!   [`errors`]: error names and strings.

pub mod conn;
pub mod errors;
pub mod exports;
pub mod guest;
pub mod image;
pub mod procaddr;
