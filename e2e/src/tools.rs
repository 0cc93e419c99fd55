//! Where the Go-built Kubernetes tools live (`hack/tools.sh` caches them).

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Directory holding `etcd`, `kube-apiserver`, `kube-controller-manager`, `kubectl`, `helm`, ...:
/// `$TESSERA_TOOLS_BIN`, else `~/.cache/tessera/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TESSERA_TOOLS_BIN") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/tessera/bin")
}

/// Path of one tool, checked to exist.
pub fn tool(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::ToolMissing {
            name: name.into(),
            path: p.display().to_string(),
        })
    }
}
