//! `nbd-randread`: fixed-count random-read benchmark client for any NBD server.
//! Every server gets the same offsets (fixed seed), so runs compare like for like.

use std::process::ExitCode;
use std::time::Duration;

use tessera_nbd::client::{Client, Target};

const USAGE: &str = "usage: nbd-randread TARGET [--export NAME] [--count N] [--block BYTES] [--depth N] [--connections N] [--seed N]
  TARGET: unix:/path/to.sock, /path/to.sock or 127.0.0.1:10809
  Reads --count blocks (default 200000 of 4096 bytes) at random aligned offsets over the whole export,
  --depth requests in flight per connection (default 16), over --connections connections (default 4).
  Prints one line: ops, seconds, IOPS, MiB/s.";

struct Args {
    target: Target,
    export: String,
    count: u64,
    block: u32,
    depth: usize,
    connections: usize,
    seed: u64,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut target = None;
    let mut a = Args {
        target: Target::Tcp(([127, 0, 0, 1], 10809).into()),
        export: String::new(),
        count: 200_000,
        block: 4096,
        depth: 16,
        connections: 4,
        seed: 42,
    };
    while let Some(x) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match x.as_str() {
            "-h" | "--help" => return Err(USAGE.into()),
            "--export" => a.export = val("--export")?,
            "--count" => {
                a.count = val("--count")?
                    .parse()
                    .map_err(|e| format!("--count: {e}"))?
            }
            "--block" => {
                a.block = val("--block")?
                    .parse()
                    .map_err(|e| format!("--block: {e}"))?
            }
            "--depth" => {
                a.depth = val("--depth")?
                    .parse()
                    .map_err(|e| format!("--depth: {e}"))?
            }
            "--connections" => {
                a.connections = val("--connections")?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?
            }
            "--seed" => a.seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            t if target.is_none() && !t.starts_with('-') => {
                target = Some(t.parse::<Target>().map_err(|e| e.to_string())?)
            }
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    a.target = target.ok_or_else(|| USAGE.to_string())?;
    if a.depth == 0 || a.connections == 0 || a.block == 0 {
        return Err("--depth, --connections and --block must be positive".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let per = a.count / a.connections as u64;
    let mut clients = Vec::new();
    for _ in 0..a.connections {
        match Client::connect(&a.target, &a.export, false) {
            Ok(c) => clients.push(c),
            Err(e) => {
                eprintln!("connect: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let size = clients.first().map_or(0, |c| c.size);
    let start = std::time::Instant::now();
    let results: Vec<Result<Duration, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(i, c)| {
                s.spawn(move || {
                    c.random_reads(per, a.block, a.depth, size, a.seed + i as u64)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    for r in &results {
        if let Err(e) = r {
            eprintln!("benchmark failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    for c in clients {
        let _ = c.disconnect();
    }
    let ops = per * a.connections as u64;
    println!(
        "ops={ops} seconds={secs:.3} iops={:.0} mib_s={:.1}",
        ops as f64 / secs,
        ops as f64 * a.block as f64 / secs / (1 << 20) as f64
    );
    ExitCode::SUCCESS
}
