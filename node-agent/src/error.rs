use thiserror::Error;

/// Errors of the node agent.
#[derive(Debug, Error)]
pub enum Error {
    #[error("running {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` is not installed on this node")]
    ToolMissing(String),
    #[error("`{cmd}` failed with {status}: {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("parsing output of {what}: {message}")]
    Parse { what: String, message: String },
    #[error("reading or writing {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} did not appear within {seconds} s (is udev running on this node?)")]
    DeviceTimeout { path: String, seconds: u64 },
    #[error("invalid pool: {0}")]
    InvalidPool(String),
    #[error("backend {0} is not built yet in the node agent (see node-agent/README.md)")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
