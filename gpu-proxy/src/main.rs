//! `tessera-gpu-proxy`: the Dom0 GPU proxy. Subcommands live in the library; this only parses
//! flags, sets up logging and maps errors to an exit status.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tessera-gpu-proxy",
    version,
    about = "Tessera GPU proxy: owns the GPU in Dom0"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve forwarded CUDA driver calls (vGPU) from stand-in libcuda clients, one isolated tenant per connection.
    Serve(tessera_gpu_proxy::serve_cmd::ServeArgs),
    /// Export host memory or GPU memory (VRAM) as an NBD block device over a unix socket / loopback TCP.
    Nbd(tessera_gpu_proxy::nbd_cmd::NbdArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(args) => tessera_gpu_proxy::serve_cmd::run(args).map_err(|e| e.to_string()),
        Command::Nbd(args) => tessera_gpu_proxy::nbd_cmd::run(args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
