//! The `serve` subcommand: arguments and start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tessera_idm::Listener;
use tessera_idm::transport::{tcp::TcpListener, unix::UnixListener, vsock::VsockListener};
use tracing::info;

use crate::cuda::CudaDriver;
use crate::error::{ProxyError, Result};
use crate::metrics::{Registry, spawn_http};
use crate::server::{Policy, accept_loop};
use crate::session::TenantConfig;

/// Serve forwarded CUDA driver calls from stand-in libcuda clients.
///
/// Every connection is one tenant, identified by the transport (SO_PEERCRED on the unix socket,
/// the CID on vsock). Each tenant gets its own CUDA context, opaque handles, a memory quota, a
/// compute share, and zeroed allocations; everything is freed when it disconnects.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket to listen on (clients find it through TESSERA_IDM_SOCKET).
    #[arg(long, default_value = "/run/tessera/idm.sock")]
    pub socket: PathBuf,
    /// Also listen on TCP (for remote clients; put it behind an authenticated tunnel).
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// Also listen on AF_VSOCK at this port (guest VMs; the CID is the tenant identity).
    #[arg(long)]
    pub vsock_port: Option<u32>,
    /// Address of the Prometheus /metrics endpoint.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics: SocketAddr,
    /// Physical GPU ordinal to serve.
    #[arg(long, default_value_t = 0)]
    pub device: i32,
    /// Default per-tenant device-memory quota, e.g. 4GiB, 512MiB, 1000000.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    pub quota: u64,
    /// Default per-tenant compute share in (0, 1]; 1 disables throttling.
    #[arg(long, default_value_t = 1.0)]
    pub share: f64,
    /// Per-uid override, repeatable: UID:QUOTA[:SHARE], e.g. 1000:1GiB:0.25.
    #[arg(long = "tenant", value_parser = parse_override)]
    pub tenants: Vec<(u32, u64, Option<f64>)>,
}

/// Parses `123`, `4KiB`, `512MiB`, `4GiB`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mul) = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("bad size {s:?} (examples: 1048576, 512MiB, 4GiB)"))
}

fn parse_share(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("bad share {s:?}: must be in (0, 1]")),
    }
}

fn parse_override(s: &str) -> std::result::Result<(u32, u64, Option<f64>), String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [uid, q] | [uid, q, _] => {
            let uid = uid.parse().map_err(|_| format!("bad uid in {s:?}"))?;
            let share = parts.get(2).map(|v| parse_share(v)).transpose()?;
            Ok((uid, parse_size(q)?, share))
        }
        _ => Err(format!("bad tenant override {s:?}: UID:QUOTA[:SHARE]")),
    }
}

pub fn run(args: &ServeArgs) -> Result<()> {
    parse_share(&args.share.to_string()).map_err(ProxyError::Config)?;
    let exec = Arc::new(CudaDriver::load(args.device)?);
    let default = TenantConfig {
        memory_quota: args.quota,
        compute_share: args.share,
        device: args.device,
    };
    let policy = Arc::new(Policy {
        default,
        by_uid: args
            .tenants
            .iter()
            .map(|(uid, q, s)| {
                (
                    *uid,
                    TenantConfig {
                        memory_quota: *q,
                        compute_share: s.unwrap_or(args.share),
                        device: args.device,
                    },
                )
            })
            .collect(),
    });
    let registry = Registry::new();
    let m = spawn_http(args.metrics, registry.clone())?;
    info!(metrics = %m, "metrics endpoint up");
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ProxyError::Io {
            op: "create socket directory",
            source,
        })?;
    }
    let mut listeners: Vec<Box<dyn Listener>> = vec![Box::new(UnixListener::bind(&args.socket)?)];
    if let Some(a) = args.tcp {
        listeners.push(Box::new(TcpListener::bind(a)?));
    }
    if let Some(port) = args.vsock_port {
        listeners.push(Box::new(VsockListener::bind(
            tessera_idm::transport::vsock::VMADDR_CID_ANY,
            port,
        )?));
    }
    let last = listeners.pop();
    for l in listeners {
        let (e, r, p) = (exec.clone(), registry.clone(), policy.clone());
        std::thread::spawn(move || accept_loop(l, e, r, p));
    }
    if let Some(l) = last {
        accept_loop(l, exec, registry, policy);
    }
    Ok(())
}
