//! tessera-operator: runs Tessera's controllers behind a leader-election Lease.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Tessera's Kubernetes operator. Two or more replicas may run: exactly one holds the Lease and acts.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Kubeconfig to use; default: in-cluster config, then $KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tessera-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "tessera-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the host name plus the PID).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Lease duration in seconds; a leader that cannot renew within it stops.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_seconds: u64,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera-operator: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async {
        let client = match &args.kubeconfig {
            Some(path) => tessera_operator_client(path).await?,
            None => kube::Client::try_default().await?,
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let identity = args
            .identity
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host.trim(), std::process::id()));
        tessera_operator::run(
            client,
            tessera_operator::Config {
                lease_namespace: args.lease_namespace.clone(),
                lease_name: args.lease_name.clone(),
                identity,
                lease_duration: Duration::from_secs(args.lease_seconds),
                listen: args.listen,
            },
        )
        .await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-operator: {e}");
            ExitCode::from(1)
        }
    }
}

async fn tessera_operator_client(path: &std::path::Path) -> tessera_operator::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
        tessera_operator::Error::Invalid {
            what: "kubeconfig".into(),
            message: e.to_string(),
        }
    })?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| tessera_operator::Error::Invalid {
            what: "kubeconfig".into(),
            message: e.to_string(),
        })?;
    Ok(kube::Client::try_from(cfg)?)
}
