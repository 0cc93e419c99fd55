//! tessera-shim: a CRI v1 runtime in front of containerd. Pods of the Xen RuntimeClass handler
//! (`tessera-xen`) become Xen domains; every other pod, container and image call is forwarded to
//! the upstream runtime. See README.md and docs/xen-guest-protocol.md.

pub mod command;
pub mod error;
pub mod image;
pub mod server;
pub mod service;
pub mod upstream;
pub mod util;
pub mod vgpu;
pub mod xen;

/// CRI `runtime.v1`, generated from the vendored upstream proto (see build.rs).
#[allow(clippy::all, clippy::unwrap_used, rust_2018_idioms, missing_docs)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

/// Largest CRI message accepted or sent (kubelet uses 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
