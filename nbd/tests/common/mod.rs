//! Shared test harness: an in-process server on a temporary unix socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;

use tessera_nbd::{HostMemory, Metrics, Server, Shared};
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub metrics: Arc<Metrics>,
    cancel: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(size: u64, export: &str) -> Self {
        Self::start_with_grace(size, export, std::time::Duration::from_secs(10))
    }

    /// A server whose memory store is served by the one-task-per-request path of device stores.
    pub fn start_concurrent(size: u64, export: &str) -> Self {
        Self::build(size, export, std::time::Duration::from_secs(10), true)
    }

    pub fn start_with_grace(size: u64, export: &str, grace: std::time::Duration) -> Self {
        Self::build(size, export, grace, false)
    }

    fn build(size: u64, export: &str, grace: std::time::Duration, concurrent: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("nbd.sock");
        let metrics = Arc::new(Metrics::new());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let mut shared = Shared::new(export, Arc::new(HostMemory::new(size)), metrics.clone());
        if concurrent {
            shared = shared.force_concurrent();
        }
        let mut server = Server::new(shared);
        server.set_shutdown_grace(grace);
        rt.block_on(server.bind_unix(&socket)).expect("bind");
        let cancel = server.cancel_token();
        let thread = std::thread::spawn(move || {
            rt.block_on(server.run()).expect("server run");
        });
        Self {
            dir,
            socket,
            metrics,
            cancel,
            thread: Some(thread),
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    pub fn target(&self) -> tessera_nbd::client::Target {
        tessera_nbd::client::Target::Unix(self.socket.clone())
    }

    /// Stop and check the clean-shutdown promises (socket file removed).
    pub fn stop(self) {
        let socket = self.socket.clone();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            self.stop_inner();
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("server shutdown hung");
        assert!(!socket.exists(), "socket file must be removed on shutdown");
    }

    fn stop_inner(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
        assert!(
            !self.socket.exists(),
            "socket file must be removed on shutdown"
        );
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Whether `tool` is on PATH; prints the one skip line when it is not.
pub fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        println!("skipped: {tool} not found (Debian packages qemu-utils, libnbd-bin, nbdkit)");
    }
    found
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    out.split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Deterministic, incompressible-looking bytes (xorshift), so zero-detection in clients can't skip them.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
