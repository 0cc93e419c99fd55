//! `tessera-shim serve`: validates the configuration, builds the two sides and serves CRI on a
//! unix socket until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::command::SystemRunner;
use crate::cri::image_service_server::ImageServiceServer;
use crate::cri::runtime_service_server::RuntimeServiceServer;
use crate::error::{Result, ShimError};
use crate::image::ImageStore;
use crate::service::Shim;
use crate::upstream::{Upstream, UpstreamEndpoint};
use crate::xen::{DomainType, XenConfig, XenRuntime, XlHypervisor, XsUnixStore};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket to serve CRI on (kubelet's --container-runtime-endpoint).
    #[arg(
        long,
        env = "TESSERA_SHIM_LISTEN",
        default_value = "/run/tessera/shim.sock"
    )]
    pub listen: PathBuf,
    /// Upstream CRI runtime for every handler but the Xen one; "none" for a Xen-only node.
    #[arg(
        long,
        env = "TESSERA_SHIM_UPSTREAM",
        default_value = "unix:///run/containerd/containerd.sock"
    )]
    pub upstream: String,
    /// Serve Xen pods (needs xl, xenstored and the guest image). Without it every pod is delegated.
    #[arg(long)]
    pub xen: bool,
    /// RuntimeClass handler whose pods become Xen domains.
    #[arg(long, default_value = "tessera-xen")]
    pub xen_handler: String,
    /// State directory: image store, per-container disk images and domain configs.
    #[arg(
        long,
        env = "TESSERA_SHIM_STATE_DIR",
        default_value = "/var/lib/tessera-shim"
    )]
    pub state_dir: PathBuf,
    /// Guest kernel (hack/xen/build-guest-image.sh).
    #[arg(long, default_value = "/usr/share/tessera/guest/vmlinux.gz")]
    pub guest_kernel: PathBuf,
    /// Guest initramfs with tessera-guest-agent as /init.
    #[arg(long, default_value = "/usr/share/tessera/guest/initramfs.cpio.gz")]
    pub guest_initramfs: PathBuf,
    /// Guest kernel command line.
    #[arg(long, default_value = "console=hvc0 rdinit=/init quiet")]
    pub guest_cmdline: String,
    /// pv or pvh.
    #[arg(long, default_value = "pv")]
    pub domain_type: String,
    /// Memory of each domain, MiB.
    #[arg(long, default_value_t = 256)]
    pub domain_memory_mib: u64,
    #[arg(long, default_value_t = 1)]
    pub domain_vcpus: u32,
    /// Free space added to each rootfs disk image, MiB.
    #[arg(long, default_value_t = 64)]
    pub rootfs_extra_mib: u64,
    /// Seconds a domain may take to boot its agent (qemu TCG needs much more than hardware).
    #[arg(long, default_value_t = 120)]
    pub boot_timeout_s: u64,
    #[arg(long, default_value = "xl")]
    pub xl: String,
    /// Cgroup driver reported to kubelet when the upstream has no RuntimeConfig (containerd
    /// < 1.7): must match the upstream's (containerd: SystemdCgroup = true means systemd).
    #[arg(long, default_value = "cgroupfs", value_parser = ["cgroupfs", "systemd"])]
    pub cgroup_driver: String,
    #[arg(long, default_value = "mke2fs")]
    pub mke2fs: String,
    /// Kubeconfig for VGpuClaim lookups (pods naming a claim with tessera.dev/vgpu-claim).
    #[arg(long, env = "TESSERA_SHIM_KUBECONFIG", conflicts_with = "apiserver")]
    pub kubeconfig: Option<PathBuf>,
    /// apiserver URL for VGpuClaim lookups with the ServiceAccount files in --credentials-dir.
    #[arg(long, env = "TESSERA_SHIM_APISERVER")]
    pub apiserver: Option<String>,
    /// Directory with the tessera-shim ServiceAccount's token and ca.crt (the chart's installer
    /// keeps them current there).
    #[arg(long, default_value = "/etc/tessera/shim")]
    pub credentials_dir: PathBuf,
    /// This node's name as the operator writes it into VGpuClaim allocations (default: hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// How the guest reaches the GPU proxy, passed as the allocation's idmChannel.
    #[arg(long)]
    pub idm_channel: Option<String>,
    /// Honour the tessera.dev/vgpu-allocation pod annotation (an allocation verbatim). For tests
    /// and Xen-only nodes without an apiserver: on a shared cluster it lets a pod author name any
    /// GPU share.
    #[arg(long)]
    pub allow_allocation_annotation: bool,
}

impl ServeArgs {
    fn xen_config(&self) -> Result<XenConfig> {
        let domain_type: DomainType = self.domain_type.parse()?;
        for (what, p) in [
            ("guest kernel", &self.guest_kernel),
            ("guest initramfs", &self.guest_initramfs),
        ] {
            if !p.is_file() {
                return Err(ShimError::Config(format!(
                    "{what} {} does not exist",
                    p.display()
                )));
            }
        }
        Ok(XenConfig {
            handler: self.xen_handler.clone(),
            state_dir: self.state_dir.clone(),
            kernel: self.guest_kernel.clone(),
            initramfs: self.guest_initramfs.clone(),
            cmdline: self.guest_cmdline.clone(),
            domain_type,
            memory_mib: self.domain_memory_mib,
            vcpus: self.domain_vcpus,
            mke2fs: self.mke2fs.clone(),
            rootfs_extra_mib: self.rootfs_extra_mib,
            boot_timeout: Duration::from_secs(self.boot_timeout_s),
            poll: Duration::from_millis(100),
        })
    }
}

pub fn open_image_store(state_dir: &std::path::Path) -> Result<ImageStore> {
    ImageStore::open(state_dir.join("images"))
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let upstream = if args.upstream == "none" {
        None
    } else {
        Some(Upstream::connect_lazy(UpstreamEndpoint::parse(
            &args.upstream,
        )?)?)
    };
    let xen = if args.xen {
        let cfg = args.xen_config()?;
        let runner = Arc::new(SystemRunner);
        let rt = XenRuntime::new(
            cfg,
            Arc::new(XlHypervisor::new(runner.clone(), args.xl.clone())),
            Arc::new(XsUnixStore::open()?),
            Arc::new(open_image_store(&args.state_dir)?),
            runner,
        )?;
        Some(Arc::new(rt))
    } else {
        None
    };
    let access = match (&args.kubeconfig, &args.apiserver) {
        (Some(k), _) => Some(crate::vgpu::KubeAccess::Kubeconfig(k.clone())),
        (None, Some(a)) => Some(crate::vgpu::KubeAccess::ServiceAccount {
            apiserver: a.clone(),
            dir: args.credentials_dir.clone(),
        }),
        (None, None) => None,
    };
    let claims = match (&access, &xen) {
        (Some(a), Some(_)) => {
            let node = match &args.node_name {
                Some(n) => n.clone(),
                None => nix::unistd::gethostname()
                    .map_err(|e| ShimError::Config(format!("reading the hostname: {e}")))?
                    .to_string_lossy()
                    .into_owned(),
            };
            Some(crate::vgpu::ClaimResolver::connect(a, node, args.idm_channel.clone()).await?)
        }
        _ => None,
    };
    if upstream.is_none() && xen.is_none() {
        return Err(ShimError::Config(
            "--upstream none without --xen leaves nothing to serve".into(),
        ));
    }
    if let Some(x) = &xen {
        // Logs and exit codes flow even when nobody asks for a status.
        let x = x.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let x = x.clone();
                let _ = tokio::task::spawn_blocking(move || x.refresh_all()).await;
            }
        });
    }
    if let Some(parent) = args.listen.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ShimError::io(parent, e))?;
    }
    match std::fs::remove_file(&args.listen) {
        Ok(()) => warn!(socket = %args.listen.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ShimError::io(&args.listen, e)),
    }
    let listener = UnixListener::bind(&args.listen).map_err(|e| ShimError::io(&args.listen, e))?;
    info!(
        listen = %args.listen.display(),
        upstream = %upstream.as_ref().map(|u| u.endpoint().display()).unwrap_or_else(|| "none".into()),
        xen = xen.is_some(),
        "tessera-shim serving CRI v1"
    );
    let cgroup_driver = if args.cgroup_driver == "systemd" {
        crate::cri::CgroupDriver::Systemd
    } else {
        crate::cri::CgroupDriver::Cgroupfs
    };
    let shim = Shim {
        upstream,
        xen,
        cgroup_driver,
        pull_auth: Default::default(),
        claims,
        allow_allocation_annotation: args.allow_allocation_annotation,
    };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
        info!("shutting down");
    };
    let res = tonic::transport::Server::builder()
        .add_service(
            RuntimeServiceServer::new(shim.clone())
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
        )
        .add_service(
            ImageServiceServer::new(shim)
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&args.listen);
    res.map_err(|e| ShimError::Config(format!("serving CRI: {e}")))
}
