//! `tessera-e2e`: a real local Kubernetes control plane for tests and `make dev`.
//!
//! It starts the pinned, Go-built etcd, kube-apiserver and kube-controller-manager (see
//! `hack/tools.sh`) on 127.0.0.1 with a generated PKI, writes a kubeconfig, waits for `/readyz`,
//! and stops every process it started, by PID.
//!
//! * [`control_plane::ControlPlane`]: start/stop one control plane.
//! * [`harness`]: one control plane per test binary and a namespace per test.
//! * [`apply`]: server-side apply of YAML files, CRD installation.

pub mod apply;
pub mod control_plane;
mod error;
pub mod harness;
pub mod pki;
pub mod tools;

pub use error::{Error, Result};

/// Root of the repository (for tests that read manifests and samples).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
