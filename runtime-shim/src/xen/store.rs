//! Per-domain xenstore keys (docs/xen-guest-protocol.md): a small trait, its xenstore-rs
//! implementation (the xenstored unix socket, or $XENSTORED_PATH), and an in-memory one for tests.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use xenstore_rs::Xs;

use crate::error::{Result, ShimError};

pub trait XenStore: Send + Sync {
    /// `Ok(None)` when the key does not exist.
    fn read(&self, path: &str) -> Result<Option<String>>;
    fn write(&self, path: &str, value: &str) -> Result<()>;
    /// Child names; empty when the node does not exist.
    fn directory(&self, path: &str) -> Result<Vec<String>>;
    /// Removes a subtree; a missing node is not an error.
    fn rm(&self, path: &str) -> Result<()>;
}

fn missing(e: &io::Error) -> bool {
    // xenstored answers ENOENT as an error string that xenstore-rs maps to NotFound or Other.
    e.kind() == io::ErrorKind::NotFound || e.to_string().contains("ENOENT")
}

/// xenstore through xenstore-rs (GPL-3.0-only, hence this crate's licence).
pub struct XsUnixStore {
    xs: Mutex<xenstore_rs::unix::XsUnix>,
}

impl std::fmt::Debug for XsUnixStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XsUnixStore")
    }
}

impl XsUnixStore {
    pub fn open() -> Result<Self> {
        let xs = xenstore_rs::unix::XsUnix::new().map_err(|source| ShimError::XenStore {
            op: "connect",
            path: std::env::var("XENSTORED_PATH")
                .unwrap_or_else(|_| "/run/xenstored/socket".into()),
            source,
        })?;
        Ok(XsUnixStore { xs: Mutex::new(xs) })
    }

    fn with<T>(
        &self,
        op: &'static str,
        path: &str,
        f: impl FnOnce(&xenstore_rs::unix::XsUnix) -> io::Result<T>,
    ) -> Result<io::Result<T>> {
        let xs = self.xs.lock().map_err(|_| ShimError::XenStore {
            op,
            path: path.into(),
            source: io::Error::other("xenstore connection lock poisoned"),
        })?;
        Ok(f(&xs))
    }
}

impl XenStore for XsUnixStore {
    fn read(&self, path: &str) -> Result<Option<String>> {
        match self.with("read", path, |xs| xs.read(path))? {
            Ok(v) => Ok(Some(v.into())),
            Err(e) if missing(&e) => Ok(None),
            Err(source) => Err(ShimError::XenStore {
                op: "read",
                path: path.into(),
                source,
            }),
        }
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        self.with("write", path, |xs| xs.write(path, value))?
            .map_err(|source| ShimError::XenStore {
                op: "write",
                path: path.into(),
                source,
            })
    }

    fn directory(&self, path: &str) -> Result<Vec<String>> {
        match self.with("directory", path, |xs| xs.directory(path))? {
            Ok(v) => Ok(v.into_iter().map(String::from).collect()),
            Err(e) if missing(&e) => Ok(Vec::new()),
            Err(source) => Err(ShimError::XenStore {
                op: "directory",
                path: path.into(),
                source,
            }),
        }
    }

    fn rm(&self, path: &str) -> Result<()> {
        match self.with("rm", path, |xs| xs.rm(path))? {
            Ok(()) => Ok(()),
            Err(e) if missing(&e) => Ok(()),
            Err(source) => Err(ShimError::XenStore {
                op: "rm",
                path: path.into(),
                source,
            }),
        }
    }
}

/// xenstored's payload limit (XENSTORE_PAYLOAD_MAX): a write's path + NUL + value must fit.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;

/// In-memory xenstore for unit tests (a flat map of full paths; parents are implied). It refuses
/// writes over xenstored's payload limit as xenstored does; runtime-shim/tests/xenstored.rs
/// checks that both answer alike.
#[derive(Debug, Default)]
pub struct MemStore {
    pub keys: Mutex<BTreeMap<String, String>>,
}

impl XenStore for MemStore {
    fn read(&self, path: &str) -> Result<Option<String>> {
        Ok(self.keys.lock().ok().and_then(|k| k.get(path).cloned()))
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        if path.len() + 1 + value.len() > XENSTORE_PAYLOAD_MAX {
            return Err(ShimError::XenStore {
                op: "write",
                path: path.into(),
                source: io::Error::from_raw_os_error(libc::E2BIG),
            });
        }
        if let Ok(mut k) = self.keys.lock() {
            k.insert(path.to_string(), value.to_string());
        }
        Ok(())
    }

    fn directory(&self, path: &str) -> Result<Vec<String>> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut out: Vec<String> = Vec::new();
        if let Ok(k) = self.keys.lock() {
            for key in k.keys() {
                if let Some(rest) = key.strip_prefix(&prefix) {
                    let child = rest.split('/').next().unwrap_or(rest).to_string();
                    if out.last() != Some(&child) && !out.contains(&child) {
                        out.push(child);
                    }
                }
            }
        }
        Ok(out)
    }

    fn rm(&self, path: &str) -> Result<()> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        if let Ok(mut k) = self.keys.lock() {
            k.retain(|key, _| key != path && !key.starts_with(&prefix));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_store_tree_semantics() {
        let s = MemStore::default();
        s.write("/local/domain/3/data/tessera/log/0", "a").unwrap();
        s.write("/local/domain/3/data/tessera/log/1", "b").unwrap();
        s.write("/local/domain/3/data/tessera/state", "running")
            .unwrap();
        assert_eq!(
            s.directory("/local/domain/3/data/tessera").unwrap(),
            vec!["log", "state"]
        );
        assert_eq!(
            s.directory("/local/domain/3/data/tessera/log").unwrap(),
            vec!["0", "1"]
        );
        s.rm("/local/domain/3/data/tessera/log").unwrap();
        assert!(
            s.directory("/local/domain/3/data/tessera/log")
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.read("/nope").unwrap(), None);
    }
}
