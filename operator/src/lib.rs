//! `tessera-operator`: Tessera's controllers, in the shape of kube-rs' controller-rs
//! (Context / reconcile / error_policy / finalizer, status through server-side apply, Events,
//! Prometheus metrics), behind leader election through a Lease.
//!
//! Controllers: [`storage_pool`], [`gpu_raid_policy`], [`vgpu`] (with the allocator in
//! [`allocator`]); leader election in [`leader`]; checks CEL cannot make in [`validate`].

pub mod allocator;
pub mod conditions;
mod error;
pub mod gpu_raid_policy;
pub mod leader;
pub mod metrics;
pub mod storage_pool;
pub mod validate;
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
    pub node_agent: Option<NodeAgentConfig>,
    /// When the node-agent DaemonSet was last applied (it is re-applied at most once a minute).
    pub daemonset_applied: std::sync::Mutex<Option<Instant>>,
}

/// How the node agent DaemonSet must look (from the operator's flags).
#[derive(Debug, Clone)]
pub struct NodeAgentConfig {
    pub namespace: String,
    pub image: String,
    pub args: Vec<String>,
    pub node_selector: std::collections::BTreeMap<String, String>,
    pub service_account: String,
    /// The operator's own Deployment (in `namespace`): made the DaemonSet's owner so that deleting
    /// the operator (helm uninstall) garbage-collects the DaemonSet too.
    pub owner_deployment: Option<String>,
}

/// The watch stream of a controller's main kind, with `managedFields` dropped before objects enter
/// the cache: they are most of an object's bytes and no controller reads them (about a third less
/// memory at 10,000 claims).
pub fn lean_stream<K>(
    api: kube::Api<K>,
    writer: kube::runtime::reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|o| {
            o.meta_mut().managed_fields = None;
        })
        .reflect(writer)
        .touched_objects()
}

/// Write `status` of a Tessera object through server-side apply as field manager
/// `tessera-operator` (forced: the operator owns the fields it sends).
pub async fn write_status<K>(
    api: &kube::Api<K>,
    name: &str,
    status: impl serde::Serialize,
) -> Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let pp = kube::api::PatchParams::apply("tessera-operator").force();
    api.patch_status(name, &pp, &kube::api::Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Publish an Event about an object; failures are logged, never fatal.
pub async fn publish_event(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: kube::runtime::events::EventType,
    reason: &str,
    note: String,
) {
    let recorder = kube::runtime::events::Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = kube::runtime::events::Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        warn!(error = %e, "publishing event");
    }
}

/// Port of the node agent's `/metrics` and `/healthz` (its `--listen` default).
pub const NODE_AGENT_METRICS_PORT: u16 = 9102;

/// The node-agent DaemonSet the operator keeps in place: privileged (it runs zpool, mdadm, lvm and
/// smartctl), on every selected node, tolerating every taint (storage nodes are often tainted).
pub fn node_agent_daemonset(cfg: &NodeAgentConfig) -> serde_json::Value {
    let labels = serde_json::json!({"app.kubernetes.io/name": "tessera-node-agent", "app.kubernetes.io/part-of": "tessera"});
    let host =
        |name: &str, path: &str| serde_json::json!({"name": name, "hostPath": {"path": path}});
    let mount = |name: &str, path: &str| serde_json::json!({"name": name, "mountPath": path});
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "tessera-node-agent", "namespace": cfg.namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "tessera-node-agent"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": cfg.service_account,
                    "nodeSelector": cfg.node_selector,
                    "tolerations": [{"operator": "Exists"}],
                    "hostPID": false,
                    "containers": [{
                        "name": "node-agent",
                        "image": cfg.image,
                        "args": cfg.args,
                        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                        "securityContext": {"privileged": true},
                        // The agent's --listen default (0.0.0.0:9102): /metrics for the chart's
                        // PodMonitor (the SMART / pool / fallback alerts), /healthz for liveness.
                        "ports": [{"name": "metrics", "containerPort": NODE_AGENT_METRICS_PORT}],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"},
                                          "initialDelaySeconds": 10, "periodSeconds": 20, "failureThreshold": 6},
                        "volumeMounts": [mount("dev", "/dev"), mount("sys", "/sys"), mount("udev", "/run/udev"), mount("modules", "/lib/modules")],
                    }],
                    "volumes": [host("dev", "/dev"), host("sys", "/sys"), host("udev", "/run/udev"), host("modules", "/lib/modules")],
                }
            }
        }
    })
}

/// Apply the node-agent DaemonSet if configured and not applied in the last minute.
pub async fn ensure_node_agent_daemonset(ctx: &Context) {
    let Some(cfg) = &ctx.node_agent else { return };
    {
        let Ok(mut last) = ctx.daemonset_applied.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *last = Some(Instant::now());
    }
    let api: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(ctx.client.clone(), &cfg.namespace);
    let mut ds = node_agent_daemonset(cfg);
    if let Some(owner) = &cfg.owner_deployment {
        let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(ctx.client.clone(), &cfg.namespace);
        match deployments.get_opt(owner).await {
            Ok(Some(d)) => {
                ds["metadata"]["ownerReferences"] = serde_json::json!([{
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": owner,
                    "uid": d.metadata.uid.unwrap_or_default(), "blockOwnerDeletion": false,
                }]);
            }
            Ok(None) => {
                warn!(%owner, "owner Deployment not found; the node-agent DaemonSet gets no owner")
            }
            Err(e) => warn!(error = %e, %owner, "reading the owner Deployment"),
        }
    }
    let pp = kube::api::PatchParams::apply("tessera-operator").force();
    if let Err(e) = api
        .patch("tessera-node-agent", &pp, &kube::api::Patch::Apply(&ds))
        .await
    {
        warn!(error = %e, "applying the node-agent DaemonSet");
        if let Ok(mut last) = ctx.daemonset_applied.lock() {
            *last = None;
        }
    }
}

/// Operator settings (flags of the binary).
#[derive(Debug, Clone)]
pub struct Config {
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub listen: SocketAddr,
    pub node_agent: Option<NodeAgentConfig>,
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
    let retry = cfg.lease_duration / 4;
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
        node_agent: cfg.node_agent.clone(),
        daemonset_applied: std::sync::Mutex::new(None),
    });
    ensure_node_agent_daemonset(&ctx).await;
    let (nodes, writer) = reflector::store::<TesseraNode>();
    let node_api: kube::Api<TesseraNode> = kube::Api::all(client.clone());
    let node_reflector = reflector(writer, watcher(node_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(()));
    let reflector_task = tokio::spawn(node_reflector);
    let _ = nodes.wait_until_ready().await;
    let controllers = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            tokio::join!(
                vgpu::run(ctx.clone(), nodes),
                storage_pool::run(ctx.clone()),
                gpu_raid_policy::run(ctx)
            );
        }
    });

    // Leader: renew; if the lease cannot be renewed before it expires, stop acting.
    // Like client-go's renewDeadline: stop acting when no renewal has succeeded for 2/3 of the lease
    // duration, measured from when the last successful request was *sent*, so a follower (which
    // waits the full duration after the recorded renewTime) never overlaps with us.
    let renew_deadline = cfg.lease_duration * 2 / 3;
    let mut last_renew = Instant::now();
    let result = loop {
        tokio::time::sleep(retry).await;
        if controllers.is_finished() {
            break Ok(()); // shut down on signal
        }
        if last_renew.elapsed() >= renew_deadline {
            break Err(Error::Invalid {
                what: "leadership".into(),
                message: format!("no renewal for {:?}; stepping down", last_renew.elapsed()),
            });
        }
        let sent = Instant::now();
        let attempt = tokio::time::timeout(
            renew_deadline.saturating_sub(last_renew.elapsed()),
            leader::try_acquire(&client, &lease),
        )
        .await;
        let attempt = match attempt {
            Ok(r) => r,
            Err(_) => continue, // timed out: the deadline check above ends leadership
        };
        match attempt {
            Ok(leader::LeaseState::Leader) => last_renew = sent,
            Ok(leader::LeaseState::Follower { holder }) => {
                break Err(Error::Invalid {
                    what: "leadership".into(),
                    message: format!("lost the lease to {holder}"),
                });
            }
            Err(e) => warn!(error = %e, "lease renewal failed"),
        }
    };
    metrics.leader.set(0);
    controllers.abort();
    reflector_task.abort();
    result
}
