//! tessera-node-agent: one-shot mode for hosts without an apiserver and for tests.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_node_agent::runner::SystemRunner;
use tessera_node_agent::smart::Thresholds;

/// Tessera's node agent. `run` is the controller mode (the DaemonSet); `inventory` and `apply` are
/// one-shot commands for hosts without an apiserver and for tests.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Controller mode: publish this node's inventory, apply the StoragePools the operator resolved
    /// to this node, report their status and the GpuRaidPolicies that select it.
    Run {
        /// Name of this node (the DaemonSet sets NODE_NAME from spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        /// Kubeconfig; default: in-cluster config, then $KUBECONFIG / ~/.kube/config.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Plan and report, but change no storage (for machines whose disks are not test disks).
        #[arg(long)]
        dry_run: bool,
        /// Seconds between passes (a change of a pool or policy triggers one sooner).
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// Address of the Prometheus `/metrics` and `/healthz` endpoint.
        #[arg(long, default_value = "0.0.0.0:9102")]
        listen: std::net::SocketAddr,
        /// CHAP credentials of iSCSI exports: DIR/<namespace>/<secret>/{username,password} (a
        /// mounted Secret).
        #[arg(long)]
        chap_dir: Option<PathBuf>,
    },
    /// Print this node's inventory (block devices, signatures, SMART, GPUs, Xen).
    Inventory {
        /// Print JSON (the TesseraNode `status.inventory` shape).
        #[arg(long)]
        json: bool,
        /// SMART thresholds as a JSON/YAML file (fields of `Thresholds`; defaults: 55/65 °C, ...).
        #[arg(long)]
        smart_thresholds: Option<PathBuf>,
    },
    /// Destroy one StoragePool (a YAML file that says `deletionPolicy: Destroy`) on this node:
    /// stop / remove it and erase its members' labels. Every step is logged with its device.
    Destroy {
        /// The StoragePool manifest.
        #[arg(long)]
        pool: PathBuf,
        /// Print the steps and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the report (conditions and the steps) here as JSON.
        #[arg(long)]
        status_out: Option<PathBuf>,
    },
    /// Verify the parity of one MD StoragePool, or of the raid5/raid6 LVs of an LVM one (a YAML
    /// file), with the Tessera parity engine: the array (LV) is put read-only while its members
    /// are read (not with --dry-run). Exit 0 consistent
    /// (after the repair, with --repair), 1 inconsistent pages left, 2 error.
    Verify {
        /// The StoragePool manifest (backend md or lvm).
        #[arg(long)]
        pool: PathBuf,
        /// Leave the array read-write (reading changes nothing; writes during the check may then
        /// show as mismatches). Never repairs.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite each inconsistent page that RAID6's syndrome blames on one member from the other
        /// members (logged per page), then verify again. RAID5 mismatches are only reported.
        #[arg(long, conflicts_with = "dry_run")]
        repair: bool,
        /// Write the outcome here as JSON.
        #[arg(long)]
        status_out: Option<PathBuf>,
    },
    /// Plan and apply one StoragePool (a YAML file) on this node.
    Apply {
        /// The StoragePool manifest.
        #[arg(long)]
        pool: PathBuf,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the agent's status report (health, capacity, members, operation, conditions, and
        /// the plan that ran) here as JSON.
        #[arg(long)]
        status_out: Option<PathBuf>,
        /// Start a scrub (ZFS) or parity check (MD, LVM RAID) after applying, unless one runs.
        #[arg(long)]
        scrub_now: bool,
        /// Take the scheduled snapshot of every ZFS dataset with a `snapshots` policy now (as if
        /// its schedule fired) and enforce its `keep`: only `tessera-` snapshots are destroyed.
        #[arg(long)]
        snapshot_now: bool,
        /// CHAP credentials of iSCSI exports: DIR/<namespace>/<secret>/{username,password}, the
        /// layout of a mounted Secret.
        #[arg(long)]
        chap_dir: Option<PathBuf>,
    },
}

/// A StoragePool manifest from a YAML file.
fn load_pool(path: &std::path::Path) -> Result<tessera_crds::StoragePool, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Write `v` as pretty JSON to `path` when one was given (`--status-out`).
fn print_verify(o: &tessera_node_agent::verify::VerifyOutcome) {
    println!(
        "{} {} ({}): {} stripes, {} inconsistent 4 KiB pages{}, {:.3} GB/s in {:.2} s",
        o.array,
        o.code,
        o.backend,
        o.stripes,
        o.mismatches,
        if o.blamed.is_empty() {
            String::new()
        } else {
            format!(" (blamed: {})", o.blamed.join(", "))
        },
        o.gb_per_second,
        o.seconds
    );
    for p in &o.repaired {
        println!("repaired {p}");
    }
    if let Some(left) = o.mismatches_after_repair {
        println!(
            "after the repair: {left} inconsistent pages ({} not attributable to one member)",
            o.unrepairable
        );
    }
}

fn write_json(path: Option<&std::path::Path>, v: &impl serde::Serialize) -> Result<(), String> {
    let Some(p) = path else { return Ok(()) };
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(p, bytes).map_err(|e| format!("{}: {e}", p.display()))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let r = SystemRunner;
    let res: Result<u8, String> = match args.cmd {
        Cmd::Run {
            node_name,
            kubeconfig,
            dry_run,
            interval,
            listen,
            chap_dir,
        } => (|| {
            let chap = match &chap_dir {
                Some(d) => {
                    tessera_node_agent::exports::chap_from_dir(d).map_err(|e| e.to_string())?
                }
                None => Vec::new(),
            };
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(async {
                let client = match kubeconfig {
                    Some(p) => {
                        let kc = kube::config::Kubeconfig::read_from(&p)
                            .map_err(|e| format!("{}: {e}", p.display()))?;
                        let c = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                            .await
                            .map_err(|e| e.to_string())?;
                        kube::Client::try_from(c).map_err(|e| e.to_string())?
                    }
                    None => kube::Client::try_default()
                        .await
                        .map_err(|e| e.to_string())?,
                };
                let cfg = tessera_node_agent::controller::Config {
                    node_name,
                    dry_run,
                    interval: std::time::Duration::from_secs(interval.max(1)),
                    thresholds: Thresholds::default(),
                    chap,
                    listen: Some(listen),
                };
                tessera_node_agent::controller::run(client, &r, cfg)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<u8, String>(0)
            })
        })(),
        Cmd::Inventory {
            json,
            smart_thresholds,
        } => (|| {
            let t: Thresholds = match smart_thresholds {
                Some(p) => serde_yaml::from_str(
                    &std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?,
                )
                .map_err(|e| format!("{}: {e}", p.display()))?,
                None => Thresholds::default(),
            };
            let inv = tessera_node_agent::inventory::collect(&r, &t).map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&inv).map_err(|e| e.to_string())?
                );
            } else {
                for d in &inv.block_devices {
                    let smart = d
                        .smart
                        .as_ref()
                        .and_then(|s| s.health.clone())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<20} {:>16} {:<28} smart={smart} signatures={}",
                        d.path,
                        d.size.as_ref().map(|q| q.0.clone()).unwrap_or_default(),
                        d.model.clone().unwrap_or_default(),
                        d.signatures.join(",")
                    );
                }
                for g in &inv.gpus {
                    println!("gpu{} {} {} {}", g.index, g.uuid, g.model, g.memory.0);
                }
                println!("xen: {:?}", inv.xen);
            }
            Ok(0)
        })(),
        Cmd::Destroy {
            pool,
            dry_run,
            status_out,
        } => (|| {
            let sp = load_pool(&pool)?;
            let report =
                tessera_node_agent::apply::destroy(&r, &sp, dry_run).map_err(|e| e.to_string())?;
            for s in &report.plan.steps {
                println!("[destructive] {}: {}", s.description, s.shown());
            }
            for x in &report.plan.refusals {
                println!("refused ({}): {}", x.reason, x.message);
            }
            if let Some(c) = report.condition("Destroyed") {
                println!("Destroyed={} ({}): {}", c.status, c.reason, c.message);
            }
            write_json(status_out.as_deref(), &report)?;
            Ok(if report.plan.refusals.is_empty() {
                0
            } else {
                3
            })
        })(),
        Cmd::Verify {
            pool,
            dry_run,
            repair,
            status_out,
        } => (|| {
            let sp = load_pool(&pool)?;
            use tessera_node_agent::verify;
            // MD: one outcome (a JSON object); LVM: one per raid5/raid6 LV (a JSON array).
            let outcomes = if let Some(spec) = &sp.spec.md {
                let o = verify::verify_md(&r, spec, dry_run, repair).map_err(|e| e.to_string())?;
                print_verify(&o);
                write_json(status_out.as_deref(), &o)?;
                vec![o]
            } else if let Some(spec) = &sp.spec.lvm {
                let v = verify::verify_lvm(&r, spec, dry_run, repair).map_err(|e| e.to_string())?;
                if v.is_empty() {
                    return Err(format!("{}: no raid5/raid6 LV to verify", pool.display()));
                }
                v.iter().for_each(print_verify);
                write_json(status_out.as_deref(), &v)?;
                v
            } else {
                return Err(format!(
                    "{}: verify needs an md pool or an lvm pool with raid5/raid6 LVs",
                    pool.display()
                ));
            };
            let left: u64 = outcomes
                .iter()
                .map(|o| o.mismatches_after_repair.unwrap_or(o.mismatches))
                .sum();
            Ok(if left == 0 { 0 } else { 1 })
        })(),
        Cmd::Apply {
            pool,
            dry_run,
            status_out,
            scrub_now,
            snapshot_now,
            chap_dir,
        } => (|| {
            let sp = load_pool(&pool)?;
            let chap = match &chap_dir {
                Some(d) => {
                    tessera_node_agent::exports::chap_from_dir(d).map_err(|e| e.to_string())?
                }
                None => Vec::new(),
            };
            let snapshots_due = if snapshot_now {
                sp.spec
                    .zfs
                    .iter()
                    .flat_map(|z| &z.datasets)
                    .filter(|d| d.snapshots.is_some())
                    .map(|d| d.name.clone())
                    .collect()
            } else {
                Vec::new()
            };
            let opts = tessera_node_agent::apply::ApplyOptions {
                dry_run,
                scrub_now,
                chap,
                snapshots_due,
            };
            let report =
                tessera_node_agent::apply::apply(&r, &sp, &opts).map_err(|e| e.to_string())?;
            for s in report.plan.steps.iter().chain(&report.extra_steps) {
                println!(
                    "{}{}: {}",
                    if s.destructive { "[destructive] " } else { "" },
                    s.description,
                    s.shown()
                );
            }
            if report.plan.is_noop() {
                println!("no actions: the node matches the spec");
            }
            for x in &report.plan.refusals {
                println!("refused ({}): {}", x.reason, x.message);
            }
            for x in &report.plan.skipped {
                println!("skipped ({}): {}", x.reason, x.message);
            }
            if let Some(h) = &report.health {
                println!("health: {h}");
            }
            write_json(status_out.as_deref(), &report)?;
            Ok(if report.plan.refusals.is_empty() {
                0
            } else {
                3
            })
        })(),
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tessera-node-agent: {e}");
            ExitCode::from(2)
        }
    }
}
