use thiserror::Error;

/// Errors of the CRD crate: generating, reading and comparing CRD manifests.
#[derive(Debug, Error)]
pub enum Error {
    #[error("serializing CRD {name} to YAML: {source}")]
    Yaml {
        name: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid quantity {0:?}: expected a Kubernetes quantity such as 16Gi, 500M or 1024")]
    Quantity(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
