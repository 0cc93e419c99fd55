//! crdgen: writes the CRD manifests of every Tessera kind (or checks that they are current).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Generate the CustomResourceDefinition YAML of every Tessera kind from the Rust types.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Directory to write `<plural>.tessera.dev.yaml` files into.
    #[arg(long, default_value = "charts/tessera/crds")]
    out: PathBuf,
    /// Do not write; exit 1 if any file in --out differs from what would be written.
    #[arg(long)]
    check: bool,
    /// Print every CRD as one multi-document YAML stream on stdout instead of writing files.
    #[arg(long, conflicts_with = "check")]
    stdout: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.stdout {
        tessera_crds::all_crds()
            .iter()
            .map(tessera_crds::crd_yaml)
            .collect::<Result<Vec<_>, _>>()
            .map(|docs| print!("{}", docs.join("---\n")))
    } else if args.check {
        match tessera_crds::stale_files(&args.out) {
            Ok(stale) if stale.is_empty() => Ok(()),
            Ok(stale) => {
                eprintln!(
                    "stale CRD manifests (run `make crds`): {}",
                    stale.join(", ")
                );
                return ExitCode::from(1);
            }
            Err(e) => Err(e),
        }
    } else {
        tessera_crds::write_all(&args.out).map(|written| {
            for w in written {
                println!("wrote {w}");
            }
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::from(2)
        }
    }
}
