//! `tessera-guest-agent`: PID 1 (`/init`) of a `tessera-xen` domain. See
//! `tessera_guest_agent::guest` and docs/xen-guest-protocol.md.

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // stderr is /dev/console (hvc0) when we are the domain's init.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    std::process::exit(tessera_guest_agent::guest::init::main_entry());
}
