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
    /// Image of the node agent; when set, the operator keeps the `tessera-node-agent` DaemonSet in
    /// the operator namespace matching these flags.
    #[arg(long)]
    node_agent_image: Option<String>,
    /// Namespace of the node-agent DaemonSet (default: the lease namespace).
    #[arg(long)]
    node_agent_namespace: Option<String>,
    /// Extra argument of the node agent (repeat the flag).
    #[arg(long = "node-agent-arg")]
    node_agent_args: Vec<String>,
    /// Node selector of the node agent, `key=value` (repeat the flag). Default: every node.
    #[arg(long = "node-agent-node-selector", value_parser = parse_kv)]
    node_agent_node_selector: Vec<(String, String)>,
    /// ServiceAccount of the node agent.
    #[arg(long, default_value = "tessera-node-agent")]
    node_agent_service_account: String,
    /// The operator's own Deployment, made the owner of the node-agent DaemonSet (so that deleting
    /// the operator removes the DaemonSet). Default: no owner.
    #[arg(long)]
    owner_deployment: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    // glibc gives every thread its own malloc arena; two are plenty for a controller and keep the
    // resident set small (M_ARENA_MAX = -8). Must run before the runtime starts its threads.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe { libc::mallopt(-8, 2) };
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
                node_agent: args.node_agent_image.clone().map(|image| {
                    tessera_operator::NodeAgentConfig {
                        namespace: args
                            .node_agent_namespace
                            .clone()
                            .unwrap_or_else(|| args.lease_namespace.clone()),
                        image,
                        args: args.node_agent_args.clone(),
                        node_selector: args.node_agent_node_selector.iter().cloned().collect(),
                        service_account: args.node_agent_service_account.clone(),
                        owner_deployment: args.owner_deployment.clone(),
                    }
                }),
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

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}
