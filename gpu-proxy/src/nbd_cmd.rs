//! `tessera-gpu-proxy nbd`: export host memory or VRAM as an NBD block device (issue 9).
//! The protocol, stores and config live in `tessera-nbd`; this is the command-line wiring.

use std::path::PathBuf;
use std::sync::Arc;

use tessera_nbd::backend::{HostMemory, Vram, VramOptions};
use tessera_nbd::config::{SizeSpec, SizeText};
use tessera_nbd::{Backend, BackendKind, Error, FileConfig, Metrics, Server, Settings, Shared};

/// Flags of `nbd`; each one overrides the same key of `--config`.
#[derive(clap::Args, Debug, Default)]
pub struct NbdArgs {
    /// Export size: bytes with an optional K/M/G/T suffix (powers of 1024), or `auto` for the VRAM
    /// backend (free VRAM minus --reserve). Must be a multiple of 512.
    #[arg(long)]
    pub size: Option<String>,
    /// Unix socket to listen on (clients: `nbd+unix:///?socket=PATH`). Removed on shutdown.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Also listen on TCP, e.g. 127.0.0.1:10809. Loopback only unless --allow-remote.
    #[arg(long)]
    pub tcp: Option<String>,
    /// YAML file with the same keys as these flags (socket, tcp, size, backend, export, metrics,
    /// max_bytes, reserve, device, allow_remote); flags win over the file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Backing store: `host` (sparse host memory) or `vram` (GPU memory through CUDA).
    #[arg(long, value_parser = ["host", "vram"])]
    pub backend: Option<String>,
    /// Export name clients ask for (default: the empty name).
    #[arg(long)]
    pub export: Option<String>,
    /// Serve Prometheus metrics on this address (GET /metrics), e.g. 127.0.0.1:9464.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Never export more than this (GpuRaidPolicy.maxVramBytes, or the VGpuClaim's memory).
    #[arg(long)]
    pub max_bytes: Option<String>,
    /// VRAM left free when --size auto (default 1G).
    #[arg(long)]
    pub reserve: Option<String>,
    /// CUDA device ordinal for the VRAM backend (default 0).
    #[arg(long)]
    pub device: Option<usize>,
    /// Permit a non-loopback --tcp address. NBD has no authentication: know what you expose.
    #[arg(long)]
    pub allow_remote: bool,
}

impl NbdArgs {
    /// The flags as a config layer, to be laid over the file.
    fn as_config(&self) -> Result<FileConfig, Error> {
        Ok(FileConfig {
            socket: self.socket.clone(),
            tcp: self.tcp.clone(),
            size: self.size.clone().map(SizeText::Text),
            backend: self.backend.as_deref().map(str::parse).transpose()?,
            export: self.export.clone(),
            metrics: self.metrics.clone(),
            max_bytes: self.max_bytes.clone().map(SizeText::Text),
            reserve: self.reserve.clone().map(SizeText::Text),
            device: self.device,
            allow_remote: self.allow_remote.then_some(true),
        })
    }

    /// File (if any) overlaid with the flags, validated.
    pub fn settings(&self) -> Result<Settings, Error> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        file.overlay(self.as_config()?).validate()
    }
}

/// Open the store the settings ask for.
pub fn open_backend(s: &Settings) -> Result<Arc<dyn Backend>, Error> {
    Ok(match s.backend {
        BackendKind::Host => match s.size {
            SizeSpec::Bytes(n) => Arc::new(HostMemory::new(n)),
            SizeSpec::Auto => return Err(Error::Config("size auto needs the VRAM backend".into())),
        },
        BackendKind::Vram => {
            let opts = VramOptions {
                device: s.device,
                size: match s.size {
                    SizeSpec::Bytes(n) => Some(n),
                    SizeSpec::Auto => None,
                },
                reserve: s.reserve,
                max_bytes: s.max_bytes,
                ..VramOptions::default()
            };
            Arc::new(Vram::open(&opts)?)
        }
    })
}

/// Run the server until SIGTERM or SIGINT, then shut down cleanly (in-flight requests finish,
/// the store is flushed, the socket file is removed).
pub fn run(args: &NbdArgs) -> Result<(), Error> {
    let settings = args.settings()?;
    let backend = open_backend(&settings)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let mut server = Server::new(Shared::new(
            settings.export.clone(),
            backend.clone(),
            metrics.clone(),
        ));
        let cancel = server.cancel_token();
        if let Some(p) = &settings.socket {
            server.bind_unix(p).await?;
        }
        let tcp = match settings.tcp {
            Some(a) => Some(server.bind_tcp(a).await?),
            None => None,
        };
        let metrics_addr = match settings.metrics {
            Some(a) => Some(tessera_nbd::metrics::serve(metrics, a, cancel.clone()).await?),
            None => None,
        };
        tracing::info!(
            store = %backend.describe(),
            socket = ?settings.socket,
            tcp = ?tcp,
            metrics = ?metrics_addr,
            export = %settings.export,
            "NBD server ready"
        );
        let signals = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
            signals.cancel();
        });
        server.run().await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("nbd.yaml");
        std::fs::write(&p, "socket: /tmp/a.sock\nsize: 1G\nexport: disk\n").expect("write");
        let args = NbdArgs {
            config: Some(p),
            size: Some("2G".into()),
            ..Default::default()
        };
        let s = args.settings().expect("valid");
        assert_eq!(s.size, SizeSpec::Bytes(2 << 30));
        assert_eq!(s.export, "disk");
        assert_eq!(s.backend, BackendKind::Host);
    }

    #[test]
    fn vram_backend_without_a_gpu_is_a_clear_error() {
        let args = NbdArgs {
            socket: Some("/tmp/unused.sock".into()),
            size: Some("64M".into()),
            backend: Some("vram".into()),
            ..Default::default()
        };
        let s = args.settings().expect("valid settings");
        match open_backend(&s) {
            // On the GPU machine this opens for real and must report the requested size.
            Ok(b) => assert_eq!(b.size(), 64 << 20),
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains("no CUDA device") || m.contains("CUDA"), "{m}");
                println!("skipped: {m}");
            }
        }
    }
}
