//! The upstream CRI runtime (containerd) that every pod not of the Xen handler is passed to.
//!
//! The channel connects lazily, so the shim starts (and serves Xen pods) while containerd is down;
//! each call then fails with a clear `Unavailable` that names the endpoint.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use crate::cri::image_service_client::ImageServiceClient;
use crate::cri::runtime_service_client::RuntimeServiceClient;
use crate::error::{Result, ShimError};

/// Where the upstream runtime listens: `unix:///run/containerd/containerd.sock` or a bare path.
#[derive(Debug, Clone)]
pub struct UpstreamEndpoint {
    pub socket: PathBuf,
}

impl UpstreamEndpoint {
    pub fn parse(s: &str) -> Result<Self> {
        let path = s.strip_prefix("unix://").unwrap_or(s);
        if path.is_empty() || !path.starts_with('/') {
            return Err(ShimError::Config(format!(
                "upstream endpoint {s:?} must be unix:///absolute/path or /absolute/path"
            )));
        }
        Ok(UpstreamEndpoint {
            socket: PathBuf::from(path),
        })
    }

    pub fn display(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    endpoint: UpstreamEndpoint,
    channel: Channel,
}

impl Upstream {
    pub fn connect_lazy(endpoint: UpstreamEndpoint) -> Result<Self> {
        let socket = endpoint.socket.clone();
        // The URI is ignored by the connector; tonic needs a syntactically valid one.
        let channel = Endpoint::try_from("http://[::1]:50051")
            .map_err(|e| ShimError::Config(e.to_string()))?
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    tokio::net::UnixStream::connect(socket)
                        .await
                        .map(TokioIo::new)
                }
            }));
        Ok(Upstream { endpoint, channel })
    }

    pub fn endpoint(&self) -> &UpstreamEndpoint {
        &self.endpoint
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
    }

    pub fn image(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
    }

    /// Rewrites transport failures into one clear `Unavailable`; the upstream's own statuses
    /// (NotFound, InvalidArgument, ...) pass through unchanged.
    pub fn map_status(&self, status: Status) -> Status {
        let transport = matches!(status.code(), Code::Unavailable)
            || (status.code() == Code::Unknown && status.message().contains("transport error"));
        if transport {
            ShimError::UpstreamUnavailable {
                endpoint: self.endpoint.display(),
                message: status.message().to_string(),
            }
            .into()
        } else {
            status
        }
    }

    pub fn is_unavailable(status: &Status) -> bool {
        status.code() == Code::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            UpstreamEndpoint::parse("unix:///run/containerd/containerd.sock")
                .unwrap()
                .socket,
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert!(UpstreamEndpoint::parse("/a/b.sock").is_ok());
        assert!(UpstreamEndpoint::parse("tcp://1.2.3.4:5").is_err());
        assert!(UpstreamEndpoint::parse("").is_err());
    }
}
