//! `tessera-raid`: offline Linux MD RAID5/6 tools and the parity benchmark. Thin: logic lives in
//! `tessera_parity`.
//!
//! Exit codes: 0 success; 1 `md verify` found inconsistent stripes; 2 bad input (members, arguments);
//! 3 any other failure (I/O on the output, ISA-L).

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tessera_parity::md::{self, Array, Overrides};
use tessera_parity::{Backend, ParityError, bench};

#[derive(Parser)]
#[command(
    name = "tessera-raid",
    version,
    about = "Tessera parity engine: offline MD RAID5/6 examine / verify / read / rebuild, and a benchmark against ISA-L",
    long_about = "Works on member devices or image files of Linux MD RAID4/5/6 arrays (superblocks 0.90, 1.0, \
1.1, 1.2) and on LVM raid5/raid6 rimage devices (give the geometry with --level/--layout/--chunk/--data-offset). \
Members are opened read-only and never written. Exit codes: 0 ok, 1 verify found inconsistent stripes, \
2 bad input, 3 other failure."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Linux MD arrays from their members.
    #[command(subcommand)]
    Md(MdCmd),
    /// Tessera vs ISA-L throughput (GB/s of data), single thread and all threads.
    Bench(BenchArgs),
    /// Write deterministic pseudo-random bytes (SplitMix64 of SEED): test payloads without blobs.
    Pattern {
        #[arg(long)]
        seed: u64,
        /// Size in bytes (suffix K, M, G allowed).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// The SIMD backends this CPU can run, best last.
    Backends {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MdCmd {
    /// Print each member's superblock (version, level, layout, chunk, roles, events, UUID).
    Examine {
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        members: Vec<PathBuf>,
    },
    /// Check P (and Q) of every stripe; RAID6 names the member that is wrong when one member is.
    Verify {
        #[command(flatten)]
        common: Common,
    },
    /// Assemble the logical array read-only (degraded allowed) and write it to --out.
    Read {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Copy the data area of member ROLE as it is on disk (no parity math) to --out.
    Extract {
        #[arg(long)]
        role: usize,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Write the data area of member ROLE, rebuilt from the others, to --out.
    Rebuild {
        /// Role (slot number) of the member to rebuild; if it is among the members given it is ignored.
        #[arg(long)]
        missing: usize,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// Machine-readable output on stdout (also hides the progress bar).
    #[arg(long)]
    json: bool,
    /// RAID level (4, 5, 6): with --chunk and --data-offset, members need no superblock and are
    /// taken in role order (write `missing` for an absent one).
    #[arg(long)]
    level: Option<u32>,
    /// Layout: mdadm name (left-symmetric, ...), LVM name (raid5_ls, raid6_zr, raid6_nr, raid6_nc, ...) or number.
    #[arg(long)]
    layout: Option<String>,
    /// Chunk size in bytes (suffix K or M allowed).
    #[arg(long, value_parser = parse_size)]
    chunk: Option<u64>,
    /// Start of the data area on each member, bytes (suffix K or M allowed).
    #[arg(long, value_parser = parse_size)]
    data_offset: Option<u64>,
    /// Number of members of the array.
    #[arg(long)]
    raid_disks: Option<usize>,
    /// Bytes of each member's data area that belong to the array (LVM: the rimage LV size).
    #[arg(long, value_parser = parse_size)]
    member_size: Option<u64>,
    /// Member devices or image files.
    #[arg(required = true)]
    members: Vec<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long)]
    json: bool,
    /// Threads of the all-thread rows (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Backend to measure (default: the best available).
    #[arg(long)]
    backend: Option<String>,
    /// Seconds per side and row.
    #[arg(long, default_value_t = 0.15)]
    round: f64,
    /// Working set of the all-thread rows, MiB (at least 1024 for the memory-bandwidth comparison).
    #[arg(long, default_value_t = 1024)]
    big_mib: usize,
    /// Only rows whose "op k+m" contains this text, e.g. "pq 8+2" or "rs-".
    #[arg(long)]
    only: Option<String>,
    /// Single-thread rows only.
    #[arg(long)]
    single: bool,
    /// GPU rows instead (needs the `cuda` feature and a GPU): kernel on device-resident data vs
    /// cuMemcpyDtoD, host end-to-end vs pinned H2D, CPU on all cores, and `auto`, per code and size.
    #[arg(long)]
    gpu: bool,
    /// Shard sizes of the GPU rows, e.g. "1M,64M".
    #[arg(long, default_value = "1M,64M", value_delimiter = ',', value_parser = parse_size)]
    gpu_sizes: Vec<u64>,
    /// With --gpu: the tuning sweep instead (matrix kernel split per size, pinned-path chunk).
    #[arg(long, requires = "gpu")]
    gpu_explore: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1024),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mul)
        .map_err(|e| format!("{s:?}: {e}"))
}

fn bar(total: u64, hidden: bool, what: &str) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

fn overrides(c: &Common) -> Result<Overrides, ParityError> {
    Ok(Overrides {
        level: c.level,
        layout: c.layout.as_deref().map(md::parse_layout).transpose()?,
        chunk: c.chunk,
        data_offset: c.data_offset,
        raid_disks: c.raid_disks,
        member_size: c.member_size,
    })
}

#[cfg(feature = "cuda")]
fn gpu_bench(a: &BenchArgs) -> Result<(), ParityError> {
    let sizes: Vec<usize> = a.gpu_sizes.iter().map(|&s| s as usize).collect();
    let quiet = a.json;
    if a.gpu_explore {
        let text = tessera_parity::gpu::bench::explore(&sizes, &|what| eprintln!("bench: {what}"))?;
        print!("{text}");
        return Ok(());
    }
    let report = tessera_parity::gpu::bench::run(&sizes, &|what| {
        if !quiet {
            eprintln!("bench: {what}");
        }
    })?;
    if a.json {
        print_json(&report)
    } else {
        print!("{}", tessera_parity::gpu::bench::render(&report));
        Ok(())
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_bench(_: &BenchArgs) -> Result<(), ParityError> {
    Err(ParityError::NoGpu(
        "tessera-raid was built without the cuda feature (cargo build --features cuda)".into(),
    ))
}

fn print_json(v: &impl serde::Serialize) -> Result<(), ParityError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| ParityError::Array(e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn open_out(out: &PathBuf, arr: &Array) -> Result<BufWriter<std::fs::File>, ParityError> {
    md::check_out_not_member(out, &arr.member_paths())?;
    tracing::info!(out = %out.display(), "writing output file (truncating it)");
    let f = std::fs::File::create(out).map_err(|e| ParityError::Io {
        path: out.clone(),
        source: e,
    })?;
    Ok(BufWriter::with_capacity(8 << 20, f))
}

fn flush(mut w: BufWriter<std::fs::File>, out: &std::path::Path) -> Result<(), ParityError> {
    w.flush().map_err(|e| ParityError::Io {
        path: out.to_path_buf(),
        source: e,
    })
}

fn run(cli: Cli) -> Result<ExitCode, ParityError> {
    match cli.cmd {
        Cmd::Backends { json } => {
            let all: Vec<_> = Backend::all_available();
            if json {
                print_json(&serde_json::json!({ "available": all, "best": Backend::best() }))?;
            } else {
                for b in &all {
                    println!("{b}");
                }
                println!("best: {}", Backend::best());
            }
        }
        Cmd::Bench(a) if a.gpu => gpu_bench(&a)?,
        Cmd::Bench(a) => {
            let mut opts = bench::Options {
                round: a.round,
                big_bytes: a.big_mib << 20,
                only: a.only.clone(),
                single_only: a.single,
                ..Default::default()
            };
            if let Some(t) = a.threads {
                opts.threads = t.max(1);
            }
            if let Some(b) = &a.backend {
                opts.backend = Backend::from_name(b)?.check()?;
            }
            let pb = if a.json || !std::io::stderr().is_terminal() {
                ProgressBar::hidden()
            } else {
                let pb = ProgressBar::new(bench::steps() as u64);
                pb.set_style(
                    ProgressStyle::with_template("bench [{bar:40}] {pos}/{len} rows ETA {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                pb
            };
            let report = bench::run(&opts, &|d| pb.set_position(d as u64))?;
            pb.finish_and_clear();
            if a.json {
                print_json(&report)?;
            } else {
                print!("{}", bench::render(&report));
            }
        }
        Cmd::Md(MdCmd::Examine { json, members }) => {
            let r = md::examine(&members);
            let bad = r.iter().any(|m| m.error.is_some());
            if json {
                print_json(&r)?;
            } else {
                for m in &r {
                    match (&m.superblock, &m.error) {
                        (Some(sb), _) => println!(
                            "{}: md {} uuid {} name {:?} raid{} layout {} ({}) chunk {} KiB raid_disks {} role {} data_offset {} data_size {} events {}",
                            m.path.display(),
                            sb.version,
                            sb.array_uuid,
                            sb.name,
                            sb.level,
                            sb.layout,
                            m.layout_name.unwrap_or("?"),
                            sb.chunk_bytes / 1024,
                            sb.raid_disks,
                            sb.role.map_or("spare/faulty".into(), |r| r.to_string()),
                            sb.data_offset,
                            sb.data_size,
                            sb.events
                        ),
                        (None, Some(e)) => println!("{}: error: {e}", m.path.display()),
                        (None, None) => {}
                    }
                }
            }
            if bad {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Md(MdCmd::Verify { common }) => {
            let arr = Array::open(&common.members, &overrides(&common)?)?;
            let total = arr.member_data * arr.members.len() as u64;
            let pb = bar(total, common.json, "verify");
            let t = Instant::now();
            let rep = arr.verify(&|d| pb.set_position(d))?;
            pb.finish_and_clear();
            if common.json {
                print_json(&serde_json::json!({
                    "level": arr.geometry.level, "layout": arr.geometry.layout, "chunk": arr.chunk,
                    "raid_disks": arr.geometry.raid_disks, "report": rep,
                    "seconds": t.elapsed().as_secs_f64(),
                }))?;
            } else {
                println!(
                    "raid{} layout {} chunk {} KiB: {} stripes ({} pages of 4 KiB) checked, {} inconsistent",
                    arr.geometry.level,
                    md::layout::layout_name(arr.geometry.layout),
                    arr.chunk / 1024,
                    rep.stripes_checked,
                    rep.pages_checked,
                    rep.mismatches.len()
                );
                for m in rep.mismatches.iter().take(50) {
                    let who = match (m.bad_role, m.bad_kind) {
                        (Some(r), Some(k)) => format!("bad member: role {r} ({k})"),
                        _ => "bad member: not locatable".into(),
                    };
                    println!(
                        "  stripe {} member offset {}: {who}",
                        m.row, m.member_offset
                    );
                }
                if rep.mismatches.len() > 50 {
                    println!(
                        "  ... {} more (use --json for all)",
                        rep.mismatches.len() - 50
                    );
                }
            }
            if !rep.mismatches.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Md(MdCmd::Read { out, common }) => {
            let arr = Array::open(&common.members, &overrides(&common)?)?;
            let mut w = open_out(&out, &arr)?;
            let pb = bar(
                arr.member_data * arr.members.len() as u64,
                common.json,
                "read",
            );
            let t = Instant::now();
            let n = arr.read_to(&mut w, &|d| pb.set_position(d))?;
            flush(w, &out)?;
            pb.finish_and_clear();
            let missing = arr.missing();
            if common.json {
                print_json(
                    &serde_json::json!({"bytes": n, "missing_roles": missing, "out": out, "seconds": t.elapsed().as_secs_f64()}),
                )?;
            } else {
                println!(
                    "wrote {n} bytes of the array to {} (missing roles rebuilt: {missing:?})",
                    out.display()
                );
            }
        }
        Cmd::Pattern { seed, size, out } => {
            let mut w =
                BufWriter::new(std::fs::File::create(&out).map_err(|e| ParityError::Io {
                    path: out.clone(),
                    source: e,
                })?);
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            while done < size {
                let n = (size - done).min(buf.len() as u64) as usize;
                // Each MiB has its own seed so any slice can be regenerated independently.
                tessera_parity::util::pattern_mib(seed, done >> 20, &mut buf[..n]);
                w.write_all(&buf[..n]).map_err(|e| ParityError::Io {
                    path: out.clone(),
                    source: e,
                })?;
                done += n as u64;
            }
            flush(w, &out)?;
        }
        Cmd::Md(MdCmd::Extract { role, out, common }) => {
            let arr = Array::open(&common.members, &overrides(&common)?)?;
            let mut w = open_out(&out, &arr)?;
            let pb = bar(arr.member_data, common.json, "extract");
            let n = arr.extract_to(role, &mut w, &|d| pb.set_position(d))?;
            flush(w, &out)?;
            pb.finish_and_clear();
            if common.json {
                print_json(&serde_json::json!({"bytes": n, "role": role, "out": out}))?;
            } else {
                println!(
                    "wrote {n} bytes: data area of role {role} as on disk to {}",
                    out.display()
                );
            }
        }
        Cmd::Md(MdCmd::Rebuild {
            missing,
            out,
            common,
        }) => {
            let mut arr = Array::open(&common.members, &overrides(&common)?)?;
            let mut w = open_out(&out, &arr)?;
            let pb = bar(
                arr.member_data * arr.members.len() as u64,
                common.json,
                "rebuild",
            );
            let t = Instant::now();
            let n = arr.rebuild_to(missing, &mut w, &|d| pb.set_position(d))?;
            flush(w, &out)?;
            pb.finish_and_clear();
            if common.json {
                print_json(
                    &serde_json::json!({"bytes": n, "role": missing, "out": out, "seconds": t.elapsed().as_secs_f64()}),
                )?;
            } else {
                println!(
                    "wrote {n} bytes: data area of role {missing} to {}",
                    out.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tessera-raid: error: {e}");
            ExitCode::from(if e.is_bad_input() { 2 } else { 3 })
        }
    }
}
