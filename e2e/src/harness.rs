//! Test harness: one control plane per test binary, a namespace per test.
//!
//! ```no_run
//! # async fn t() -> tessera_e2e::Result<()> {
//! let cluster = tessera_e2e::harness::cluster().await?;     // starts once per test binary
//! let ns = cluster.namespace("my-test").await?;               // fresh namespace
//! # Ok(()) }
//! ```
//!
//! The control plane is started from a dedicated thread that lives as long as the test process,
//! so `PR_SET_PDEATHSIG` ends the children with the process; an `atexit` hook also stops them by
//! PID and removes the state directory, so a test run leaves nothing behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::control_plane::{ControlPlane, Mode, client_from_kubeconfig};
use crate::error::{Error, Result};

/// What tests get: the kubeconfig of the shared control plane.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
}

static SHARED: OnceLock<std::result::Result<Cluster, String>> = OnceLock::new();
static PIDS: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());
static DIR: OnceLock<PathBuf> = OnceLock::new();
static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

extern "C" fn stop_at_exit() {
    let pids = PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    // Reverse start order: controller manager, apiserver, then etcd; each waited for (SIGKILL after 10 s).
    for (name, pid) in pids.iter().rev() {
        if crate::control_plane::is_our_process(*pid, name) {
            crate::control_plane::terminate(name, *pid);
        }
    }
    if let Some(dir) = DIR.get()
        && std::env::var_os("TESSERA_E2E_KEEP").is_none()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn start_shared() -> std::result::Result<Cluster, String> {
    let dir = std::env::temp_dir().join(format!("tessera-e2e-{}", std::process::id()));
    let _ = DIR.set(dir.clone());
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(stop_at_exit) };
    let (tx, rx) = mpsc::channel();
    let thread_dir = dir.clone();
    std::thread::Builder::new()
        .name("tessera-control-plane".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            match rt.block_on(ControlPlane::start(&thread_dir, Mode::Attached)) {
                Ok(cp) => {
                    if let Ok(mut p) = PIDS.lock() {
                        *p = cp.pids();
                    }
                    let _ = tx.send(Ok(Cluster {
                        kubeconfig: cp.kubeconfig.clone(),
                        dir: thread_dir,
                    }));
                    // Keep the children's parent thread alive (PDEATHSIG) and never drop `cp`:
                    // the atexit hook stops the processes.
                    std::mem::forget(cp);
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())?
}

/// The control plane of this test binary, started on first use.
pub async fn cluster() -> Result<Cluster> {
    let shared = tokio::task::spawn_blocking(|| SHARED.get_or_init(start_shared).clone())
        .await
        .map_err(|e| Error::Invalid(e.to_string()))?;
    shared.map_err(|e| Error::Invalid(format!("starting the local control plane: {e}")))
}

impl Cluster {
    /// A new admin client (bound to the calling test's runtime).
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Create a fresh namespace `<prefix>-<n>` for one test.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{n}");
        let api: Api<Namespace> = Api::all(self.client().await?);
        api.create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
        Ok(name)
    }

    /// Run `kubectl` against this cluster; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = std::process::Command::new(crate::tools::tool("kubectl")?)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .map_err(crate::error::io("running kubectl"))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}
