//! Entry point of the `tessera-guest-agent` binary (kept thin in src/bin).

use std::path::PathBuf;
use std::time::Duration;

use super::agent::{Agent, AgentConfig};
use super::error::Result;
use super::sys;
use super::xenbus::{XENBUS_DEVICE, XenbusClient};

/// Modules to load at boot, one path per line, dependencies first (written by
/// hack/xen/build-guest-image.sh).
pub const MODULES_LIST: &str = "/lib/modules/load.list";

/// How the binary runs, from the process id and the environment.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// PID 1: do the early mounts and load modules.
    pub pid1: bool,
    /// `/dev/xen/xenbus`, or `unix:/run/xenstored/socket` (dom0 debugging).
    pub xenbus: String,
    pub modules_list: PathBuf,
    pub agent: AgentConfig,
}

impl InitOptions {
    /// Defaults, overridden by `TESSERA_XENBUS`, `TESSERA_ROOTFS`, `TESSERA_NO_MOUNT=1`,
    /// `TESSERA_LIBCUDA`.
    pub fn from_env() -> Self {
        let mut agent = AgentConfig::default();
        if let Ok(r) = std::env::var("TESSERA_ROOTFS") {
            agent.rootfs = PathBuf::from(r);
        }
        if std::env::var("TESSERA_NO_MOUNT").as_deref() == Ok("1") {
            agent.mount_rootfs = false;
        }
        if let Ok(l) = std::env::var("TESSERA_LIBCUDA") {
            agent.libcuda = Some(PathBuf::from(l));
        }
        InitOptions {
            pid1: std::process::id() == 1,
            xenbus: std::env::var("TESSERA_XENBUS").unwrap_or_else(|_| XENBUS_DEVICE.to_string()),
            modules_list: PathBuf::from(MODULES_LIST),
            agent,
        }
    }
}

/// Boots (as PID 1) and runs the agent; returns only on error (or when the store closes).
pub fn run(opts: InitOptions) -> Result<()> {
    if opts.pid1 {
        sys::early_mounts()?;
        let (n, failed) = sys::load_modules(&opts.modules_list)?;
        for f in &failed {
            tracing::warn!("module not loaded: {f}");
        }
        tracing::info!(
            modules = n,
            uptime = sys::uptime(),
            "tessera-guest-agent: early init done"
        );
    }
    let store = match opts.xenbus.strip_prefix("unix:") {
        Some(sock) => {
            let c = XenbusClient::connect_socket(sock)?;
            return Agent::new(c, opts.agent)?.run();
        }
        None => XenbusClient::open_device(&opts.xenbus)?,
    };
    let mut agent = Agent::new(store, opts.agent)?;
    tracing::info!(domain = %agent.keys().domain, uptime = sys::uptime(), "xenstore connected");
    agent.run()
}

/// The binary's main: run, and as PID 1 never return (power off after a fatal error so the
/// domain goes away; its console log keeps the reason).
pub fn main_entry() -> i32 {
    let opts = InitOptions::from_env();
    let pid1 = opts.pid1;
    let rc = match run(opts) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("tessera-guest-agent: {e}");
            1
        }
    };
    if pid1 {
        std::thread::sleep(Duration::from_secs(2));
        sys::power_off();
    }
    rc
}
