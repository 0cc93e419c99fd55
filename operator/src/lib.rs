//! `tessera-operator`: Tessera's controllers, in the shape of kube-rs' controller-rs
//! (Context / reconcile / error_policy / finalizer, status through server-side apply, Events,
//! Prometheus metrics), behind leader election through a Lease.
//!
//! Built today: the VGpuClaim controller ([`vgpu`], with the allocator in [`allocator`]), leader
//! election ([`leader`]), metrics and health endpoints. Not built yet: the StoragePool and
//! GpuRaidPolicy controllers and the node-agent DaemonSet management (see README.md).

pub mod allocator;
pub mod conditions;
mod error;
pub mod leader;
pub mod metrics;
pub mod vgpu;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use futures::StreamExt;
use kube::Client;
use kube::runtime::events::Reporter;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tessera_crds::TesseraNode;
use tracing::{error, info, warn};

pub use error::{Error, Result};
pub use metrics::Metrics;

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub reporter: Reporter,
}

/// Operator settings (flags of the binary).
#[derive(Debug, Clone)]
pub struct Config {
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub listen: SocketAddr,
}

async fn metrics_handler(
    State(m): State<Metrics>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr`; returns the bound address.
pub async fn serve_http(addr: SocketAddr, metrics: Metrics) -> Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::Server)?;
    let bound = listener.local_addr().map_err(Error::Server)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// Run the operator: metrics server, then leader election; the leader runs the controllers.
/// Returns an error (the process should exit non-zero) when leadership is lost.
pub async fn run(client: Client, cfg: Config) -> Result<()> {
    let metrics = Metrics::default();
    let bound = serve_http(cfg.listen, metrics.clone()).await?;
    info!(%bound, "serving /metrics, /healthz, /readyz");
    let lease = leader::LeaseConfig {
        namespace: cfg.lease_namespace.clone(),
        name: cfg.lease_name.clone(),
        identity: cfg.identity.clone(),
        duration: cfg.lease_duration,
    };
    let retry = cfg.lease_duration / 3;
    // Follower: poll until the lease is ours.
    loop {
        match leader::try_acquire(&client, &lease).await {
            Ok(leader::LeaseState::Leader) => break,
            Ok(leader::LeaseState::Follower { holder }) => {
                info!(%holder, "not the leader; waiting")
            }
            Err(e) => warn!(error = %e, "lease check failed"),
        }
        tokio::time::sleep(retry).await;
    }
    metrics.leader.set(1);
    info!(identity = %cfg.identity, "leading; starting controllers");
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics: metrics.clone(),
        reporter: Reporter {
            controller: "tessera-operator".into(),
            instance: Some(cfg.identity.clone()),
        },
    });
    let (nodes, writer) = reflector::store::<TesseraNode>();
    let node_api: kube::Api<TesseraNode> = kube::Api::all(client.clone());
    let node_reflector = reflector(writer, watcher(node_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(()));
    let reflector_task = tokio::spawn(node_reflector);
    let _ = nodes.wait_until_ready().await;
    let controllers = tokio::spawn(vgpu::run(ctx.clone(), nodes));

    // Leader: renew; if the lease cannot be renewed before it expires, stop acting.
    let mut last_renew = Instant::now();
    let result = loop {
        tokio::time::sleep(retry).await;
        if controllers.is_finished() {
            break Ok(()); // shut down on signal
        }
        match leader::try_acquire(&client, &lease).await {
            Ok(leader::LeaseState::Leader) => last_renew = Instant::now(),
            Ok(leader::LeaseState::Follower { holder }) => {
                break Err(Error::Invalid {
                    what: "leadership".into(),
                    message: format!("lost the lease to {holder}"),
                });
            }
            Err(e) => {
                warn!(error = %e, "lease renewal failed");
                if last_renew.elapsed() >= cfg.lease_duration {
                    break Err(Error::Invalid {
                        what: "leadership".into(),
                        message: "lease expired".into(),
                    });
                }
            }
        }
    };
    metrics.leader.set(0);
    controllers.abort();
    reflector_task.abort();
    result
}
