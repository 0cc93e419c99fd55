use thiserror::Error;

/// Errors of the local control plane and the test harness.
#[derive(Debug, Error)]
pub enum Error {
    #[error("tool {name} not found at {path}: run `hack/tools.sh` (or `make deps`) to build it")]
    ToolMissing { name: String, path: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("command `{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{component} did not become ready within {seconds}s; last error: {last}; log: {log}")]
    NotReady {
        component: String,
        seconds: u64,
        last: String,
        log: String,
    },
    #[error("{component} exited early ({status}); log: {log}")]
    Exited {
        component: String,
        status: String,
        log: String,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("YAML in {file}: {source}")]
    Yaml {
        file: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
