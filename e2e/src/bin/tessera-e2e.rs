//! tessera-e2e: start and stop a local control plane (used by `make dev` / `make dev-down`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_e2e::control_plane::{ControlPlane, Mode, stop_detached};

/// A real local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager on
/// 127.0.0.1), built from the pinned upstream sources by hack/tools.sh.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// State directory (PKI, kubeconfig, logs, PID files).
    #[arg(long, global = true, default_value = ".dev/cluster")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the control plane in the background and print `export KUBECONFIG=...`.
    Up {
        /// Also install the CRDs from this directory and wait until they are Established.
        #[arg(long)]
        crds: Option<PathBuf>,
        /// Server-side apply these YAML files afterwards (samples).
        #[arg(long)]
        apply: Vec<PathBuf>,
    },
    /// Stop the processes recorded in the state directory.
    Down,
    /// Print whether the recorded processes run.
    Status,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera-e2e: {e}");
            return ExitCode::from(1);
        }
    };
    let res: tessera_e2e::Result<()> = rt.block_on(async {
        match args.cmd {
            Cmd::Up { crds, apply } => {
                let stopped = stop_detached(&args.dir);
                if !stopped.is_empty() {
                    eprintln!("stopped a previous run: {}", stopped.join(", "));
                }
                let cp = ControlPlane::start(&args.dir, Mode::Detached).await?;
                let client = cp.client().await?;
                if let Some(dir) = crds {
                    for n in tessera_e2e::apply::install_crds(&client, &dir).await? {
                        eprintln!("CRD established: {n}");
                    }
                }
                for f in apply {
                    for o in tessera_e2e::apply::apply_file(&client, &f, None).await? {
                        let kind = o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
                        eprintln!("applied {kind}/{}", o.metadata.name.unwrap_or_default());
                    }
                }
                let kubeconfig =
                    std::fs::canonicalize(&cp.kubeconfig).unwrap_or(cp.kubeconfig.clone());
                // Detached: leave the processes running; `down` stops them by PID.
                let pids = cp.pids();
                std::mem::forget(cp);
                for (n, p) in pids {
                    eprintln!("{n}: pid {p}");
                }
                println!("export KUBECONFIG={}", kubeconfig.display());
                Ok(())
            }
            Cmd::Down => {
                let stopped = stop_detached(&args.dir);
                if stopped.is_empty() {
                    eprintln!("nothing was running under {}", args.dir.display());
                } else {
                    eprintln!("stopped {}", stopped.join(", "));
                }
                Ok(())
            }
            Cmd::Status => {
                let mut any = false;
                for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
                    let pid =
                        std::fs::read_to_string(args.dir.join("run").join(format!("{name}.pid")))
                            .ok()
                            .and_then(|s| s.trim().parse::<u32>().ok());
                    let state = match pid {
                        Some(p) if tessera_e2e::control_plane::is_our_process(p, name) => {
                            any = true;
                            format!("running (pid {p})")
                        }
                        Some(p) => format!("not running (stale pid {p})"),
                        None => "not running".into(),
                    };
                    println!("{name}: {state}");
                }
                if any {
                    Ok(())
                } else {
                    Err(tessera_e2e::Error::Invalid(
                        "control plane not running".into(),
                    ))
                }
            }
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-e2e: {e}");
            ExitCode::from(1)
        }
    }
}
