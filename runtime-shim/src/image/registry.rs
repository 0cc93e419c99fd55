//! A small OCI distribution client: pulls manifest, config and layers into the image store,
//! checking every digest. Anonymous or basic/bearer auth (the registry's token service). Registries
//! on localhost/127.0.0.1 and those listed in `TESSERA_SHIM_INSECURE_REGISTRIES` (comma separated)
//! are spoken to over plain http; every other one over https with the system's roots.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::info;

use super::reference::Reference;
use super::store::{
    ImageStore, MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, Manifest,
    StoredImage, sha256_hex,
};
use crate::cri;
use crate::error::{Result, ShimError};

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

fn insecure(registry: &str) -> bool {
    let host = registry.split(':').next().unwrap_or(registry);
    host == "localhost"
        || host == "127.0.0.1"
        || std::env::var("TESSERA_SHIM_INSECURE_REGISTRIES")
            .map(|v| v.split(',').any(|r| r.trim() == registry))
            .unwrap_or(false)
}

struct Session {
    client: HttpClient,
    base: String,
    registry: String,
    auth: Option<String>,
    basic: Option<String>,
}

fn reg_err(registry: &str, message: impl Into<String>) -> ShimError {
    ShimError::Registry {
        registry: registry.to_string(),
        message: message.into(),
    }
}

fn parse_challenge(v: &str) -> Option<HashMap<String, String>> {
    let rest = v.strip_prefix("Bearer ")?;
    let mut out = HashMap::new();
    for part in rest.split(',') {
        let (k, val) = part.split_once('=')?;
        out.insert(
            k.trim().to_string(),
            val.trim().trim_matches('"').to_string(),
        );
    }
    Some(out)
}

impl Session {
    async fn get(&mut self, path: &str, accept: &str) -> Result<Bytes> {
        for attempt in 0..2 {
            let url = format!("{}{path}", self.base);
            let mut rb = Request::get(&url).header(header::ACCEPT, accept);
            if let Some(a) = &self.auth {
                rb = rb.header(header::AUTHORIZATION, a);
            }
            let req = rb
                .body(Empty::new())
                .map_err(|e| reg_err(&self.registry, e.to_string()))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| reg_err(&self.registry, format!("GET {url}: {}", chain(&e))))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                self.authenticate(challenge.as_deref()).await?;
                continue;
            }
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| reg_err(&self.registry, format!("reading {url}: {e}")))?
                .to_bytes();
            if !status.is_success() {
                return Err(reg_err(
                    &self.registry,
                    format!(
                        "GET {url}: {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    ),
                ));
            }
            return Ok(body);
        }
        Err(reg_err(&self.registry, "unauthorized"))
    }

    async fn authenticate(&mut self, challenge: Option<&str>) -> Result<()> {
        match challenge.and_then(parse_challenge) {
            Some(c) => {
                let realm = c.get("realm").cloned().unwrap_or_default();
                let mut url = format!("{realm}?");
                for k in ["service", "scope"] {
                    if let Some(v) = c.get(k) {
                        url.push_str(&format!("{k}={v}&"));
                    }
                }
                let mut rb = Request::get(url.trim_end_matches('&'));
                if let Some(b) = &self.basic {
                    rb = rb.header(header::AUTHORIZATION, b);
                }
                let req = rb
                    .body(Empty::new())
                    .map_err(|e| reg_err(&self.registry, e.to_string()))?;
                let resp = self.client.request(req).await.map_err(|e| {
                    reg_err(&self.registry, format!("token {realm}: {}", chain(&e)))
                })?;
                let ok = resp.status().is_success();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| reg_err(&self.registry, e.to_string()))?
                    .to_bytes();
                if !ok {
                    return Err(reg_err(
                        &self.registry,
                        format!("token service {realm} refused"),
                    ));
                }
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let token = v["token"]
                    .as_str()
                    .or(v["access_token"].as_str())
                    .ok_or_else(|| {
                        reg_err(&self.registry, "token service answered without a token")
                    })?;
                self.auth = Some(format!("Bearer {token}"));
                Ok(())
            }
            None => match &self.basic {
                Some(b) => {
                    self.auth = Some(b.clone());
                    Ok(())
                }
                None => Err(reg_err(
                    &self.registry,
                    "the registry wants credentials and none were given",
                )),
            },
        }
    }
}

/// An error with its causes ("client error (Connect): tcp connect error: Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Pulls `image` into `store` (a no-op when a digest reference is already stored).
pub async fn pull(
    store: &ImageStore,
    image: &str,
    auth: Option<&cri::AuthConfig>,
) -> Result<StoredImage> {
    let r = Reference::parse(image)?;
    if r.digest.is_some()
        && let Some(found) = store.find(image)?
    {
        return Ok(found);
    }
    let scheme = if insecure(&r.registry) {
        "http"
    } else {
        "https"
    };
    let builder = if scheme == "http" {
        // Plain HTTP needs no roots; a host without a CA bundle (a minimal dom0) still pulls.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| reg_err(&r.registry, format!("TLS setup: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
    } else {
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| reg_err(&r.registry, format!("loading the system's TLS roots: {e}")))?
    };
    let https = builder.https_or_http().enable_http1().build();
    let registry_host = if r.registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        &r.registry
    };
    let basic = auth.and_then(|a| {
        if !a.auth.is_empty() {
            Some(format!("Basic {}", a.auth))
        } else if !a.username.is_empty() {
            Some(format!(
                "Basic {}",
                B64.encode(format!("{}:{}", a.username, a.password))
            ))
        } else {
            None
        }
    });
    let mut s = Session {
        client: Client::builder(TokioExecutor::new()).build(https),
        base: format!("{scheme}://{registry_host}/v2/{}", r.repository),
        registry: r.registry.clone(),
        auth: auth
            .filter(|a| !a.registry_token.is_empty())
            .map(|a| format!("Bearer {}", a.registry_token)),
        basic,
    };
    let accept = [
        MT_OCI_INDEX,
        MT_OCI_MANIFEST,
        MT_DOCKER_LIST,
        MT_DOCKER_MANIFEST,
    ]
    .join(", ");
    let mut body = s
        .get(&format!("/manifests/{}", r.manifest_ref()), &accept)
        .await?;
    let mut digest = format!("sha256:{}", sha256_hex(&body));
    if let Some(d) = &r.digest
        && *d != digest
    {
        return Err(ShimError::Image {
            reference: image.into(),
            message: format!("registry returned manifest {digest}, not the requested {d}"),
        });
    }
    let mut manifest: Manifest =
        serde_json::from_slice(&body).map_err(|source| ShimError::Json {
            what: format!("manifest of {image}"),
            source,
        })?;
    if !manifest.manifests.is_empty() {
        // An index: take linux/amd64 (the architecture of the domains this shim boots).
        let pick = manifest
            .manifests
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| ShimError::Image {
                reference: image.into(),
                message: "the image index has no linux/amd64 manifest".into(),
            })?
            .clone();
        store.put_blob(&digest, &body)?;
        body = s
            .get(&format!("/manifests/{}", pick.digest), &accept)
            .await?;
        digest = pick.digest.clone();
        manifest = serde_json::from_slice(&body).map_err(|source| ShimError::Json {
            what: format!("manifest {digest}"),
            source,
        })?;
    }
    store.put_blob(&digest, &body)?;
    let config = manifest.config.clone().ok_or_else(|| ShimError::Image {
        reference: image.into(),
        message: "manifest has no config".into(),
    })?;
    for d in std::iter::once(&config).chain(manifest.layers.iter()) {
        if store.has_blob(&d.digest) {
            continue;
        }
        let blob = s.get(&format!("/blobs/{}", d.digest), "*/*").await?;
        store.put_blob(&d.digest, &blob)?;
    }
    let mut tagged = r.clone();
    if tagged.tag.is_none() && tagged.digest.is_some() {
        tagged.digest = None;
    }
    info!(image, manifest = %digest, "pulled");
    let stored = store.record(&tagged, &digest)?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#).unwrap();
        assert_eq!(c["realm"], "https://auth.docker.io/token");
        assert_eq!(c["scope"], "repository:library/busybox:pull");
        assert!(parse_challenge("Basic realm=x").is_none());
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_named_with_the_cause_and_stores_nothing() {
        // A port nothing listens on: bind, note, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::open(d.path()).unwrap();
        let e = pull(&store, &format!("127.0.0.1:{port}/x/y:1"), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("registry 127.0.0.1:{port}")), "{e}");
        assert!(e.to_lowercase().contains("connection refused"), "{e}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn plain_http_only_for_local_or_listed() {
        assert!(insecure("127.0.0.1:5000"));
        assert!(insecure("localhost:5000"));
        assert!(!insecure("gcr.io"));
    }
}
