//! `tessera-shim`: thin CLI over the library (see README.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tessera-shim",
    version,
    about = "Tessera CRI v1 runtime: tessera-xen pods run as Xen domains, every other pod goes to containerd",
    long_about = "Serves the CRI v1 RuntimeService and ImageService on a unix socket in front of containerd. \
RunPodSandbox with the Xen handler (default tessera-xen) creates a Xen domain per pod whose guest agent runs the \
container; every other handler, and every id that the Xen side does not own, is forwarded to the upstream runtime. \
Point kubelet's --container-runtime-endpoint at --listen."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve CRI on --listen.
    Serve(Box<tessera_shim::server::ServeArgs>),
    /// Manage the image store of Xen pods.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Load every tagged image of an OCI image layout (directory, or a tar of one) as NAME:TAG.
    Load {
        /// OCI layout directory or tarball (skopeo copy ... oci:DIR / oci-archive:FILE).
        source: PathBuf,
        /// Repository name the tags belong to, e.g. 127.0.0.1:5000/busybox.
        #[arg(long)]
        name: String,
        #[arg(
            long,
            env = "TESSERA_SHIM_STATE_DIR",
            default_value = "/var/lib/tessera-shim"
        )]
        state_dir: PathBuf,
    },
    /// List the images of the Xen image store.
    List {
        #[arg(
            long,
            env = "TESSERA_SHIM_STATE_DIR",
            default_value = "/var/lib/tessera-shim"
        )]
        state_dir: PathBuf,
    },
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
    let result = match cli.command {
        Command::Serve(args) => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(tessera_shim::server::serve(*args)),
            Err(e) => Err(tessera_shim::error::ShimError::Config(format!(
                "starting tokio: {e}"
            ))),
        },
        Command::Image { command } => match command {
            ImageCommand::Load {
                source,
                name,
                state_dir,
            } => tessera_shim::server::open_image_store(&state_dir)
                .and_then(|s| s.import_layout(&source, &name))
                .map(|images| {
                    for i in images {
                        println!("{} {}", i.id, i.repo_tags.join(","));
                    }
                }),
            ImageCommand::List { state_dir } => tessera_shim::server::open_image_store(&state_dir)
                .and_then(|s| s.list())
                .map(|images| {
                    for i in images {
                        println!("{} {} {}", i.id, i.repo_tags.join(","), i.size);
                    }
                }),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-shim: {e}");
            ExitCode::FAILURE
        }
    }
}
