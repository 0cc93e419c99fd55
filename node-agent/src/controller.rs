//! Controller mode: keep this node's TesseraNode inventory current, apply the StoragePools that
//! the operator resolved to this node, and report the agent's share of their status and of the
//! GpuRaidPolicies that select this node, all through server-side apply.
//!
//! Field managers: `tessera-node-agent` for TesseraNode and StoragePool status (one node per pool);
//! `tessera-node-agent-<node>` for GpuRaidPolicy `status.nodes[nodeName=<node>]`, because several
//! nodes' agents write entries of the same list and each must own only its own.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tessera_crds::storage_pool::DeletionPolicy;
use tessera_crds::{GpuRaidPolicy, StoragePool, TesseraNode};
use tracing::{info, warn};

use crate::apply::{AgentReport, ApplyOptions, apply};
use crate::error::{Error, Result};
use crate::exports::ChapCredentials;
use crate::metrics::Metrics;
use crate::runner::Runner;
use crate::schedule::Cron;
use crate::smart::{Health, Thresholds};
use k8s_openapi::jiff::Zoned;
use k8s_openapi::jiff::civil::DateTime;

const MANAGER: &str = "tessera-node-agent";

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub dry_run: bool,
    pub interval: Duration,
    pub thresholds: Thresholds,
    /// CHAP credentials of iSCSI exports (`namespace/name` of the secret).
    pub chap: Vec<(String, ChapCredentials)>,
    /// Where to serve `/metrics` and `/healthz` (`run` only); `None`: no HTTP server.
    pub listen: Option<std::net::SocketAddr>,
}

/// What the controller keeps between passes: the metrics, and per pool the last time its
/// `scrubSchedule` was looked at (a scheduled time between two looks starts a scrub).
#[derive(Debug)]
pub struct AgentState {
    pub metrics: Metrics,
    last_look: HashMap<String, DateTime>,
    started: DateTime,
    /// The last Event reason per subject (`pool/NAME`, `drive/PATH`): an Event is published when
    /// it changes, not on every pass.
    last_event: HashMap<String, String>,
    /// This node (the Events' reporting instance).
    node: String,
}

impl AgentState {
    pub fn new(node: &str) -> AgentState {
        AgentState {
            metrics: Metrics::new(node),
            last_look: HashMap::new(),
            last_event: HashMap::new(),
            node: node.to_string(),
            started: Zoned::now().datetime(),
        }
    }

    /// A state whose clock starts at `started` (schedules count from there on the first look).
    pub fn started_at(node: &str, started: DateTime) -> AgentState {
        AgentState {
            started,
            ..AgentState::new(node)
        }
    }

    /// Whether pool `name`'s schedule fired since the last look (the first look counts from the
    /// agent's start: scrubs missed while the agent was down are not made up).
    pub fn scrub_due(&mut self, name: &str, schedule: &str, now: DateTime) -> Result<bool> {
        let cron = Cron::parse(schedule)?;
        let last = self
            .last_look
            .insert(name.to_string(), now)
            .unwrap_or(self.started);
        Ok(cron.fired_between(last, now))
    }
}

/// What happened to a subject, as an Event: (warning, reason, note).
type EventDraft = (bool, String, String);

/// Publish `draft` about `reference` when its reason differs from the last one published for
/// `subject` (`None` forgets the subject: the next draft is published again). Failures are logged.
async fn event_on_change(
    client: &Client,
    state: &mut AgentState,
    subject: String,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    draft: Option<EventDraft>,
) {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let Some((warning, reason, note)) = draft else {
        state.last_event.remove(&subject);
        return;
    };
    if state.last_event.get(&subject) == Some(&reason) {
        return;
    }
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(state.node.clone()),
    };
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.clone(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.clone(),
        secondary: None,
    };
    match Recorder::new(client.clone(), reporter)
        .publish(&ev, reference)
        .await
    {
        Ok(()) => {
            state.last_event.insert(subject, reason);
        }
        Err(e) => warn!(error = %e, "publishing event"),
    }
}

/// The Event a pool report deserves, if any: refusals, failures, degradation, destruction and
/// applied changes; nothing for a quiet no-op pass.
pub fn pool_event(report: &AgentReport) -> Option<EventDraft> {
    let c = |t: &str| report.condition(t);
    if let Some(d) = c("Destroyed") {
        return match (d.status.as_str(), d.reason.as_str()) {
            ("True", "Destroyed") => Some((false, "PoolDestroyed".into(), d.message.clone())),
            ("True", _) => None,
            (_, reason) => Some((true, reason.into(), d.message.clone())),
        };
    }
    if let Some(a) = c("Applied").filter(|a| a.status == "False") {
        return Some((true, a.reason.clone(), a.message.clone()));
    }
    if let Some(d) = c("Degraded").filter(|d| d.status == "True") {
        return Some((true, "PoolDegraded".into(), d.message.clone()));
    }
    if !report.plan.steps.is_empty() {
        let a = c("Applied");
        return Some((
            false,
            a.map(|a| a.reason.clone())
                .unwrap_or_else(|| "Applied".into()),
            a.map(|a| a.message.clone()).unwrap_or_default(),
        ));
    }
    // Healthy and unchanged: forget, so that a later problem is announced again.
    None
}

fn kube_err(e: kube::Error) -> Error {
    Error::Parse {
        what: "kubernetes API".into(),
        message: e.to_string(),
    }
}

/// Write the inventory into this node's TesseraNode (creating it if needed).
pub async fn publish_inventory(
    client: &Client,
    r: &dyn Runner,
    cfg: &Config,
) -> Result<tessera_crds::tessera_node::Inventory> {
    let api: Api<TesseraNode> = Api::all(client.clone());
    let pp = PatchParams::apply(MANAGER).force();
    let obj = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "TesseraNode",
        "metadata": {"name": cfg.node_name}, "spec": {"nodeName": cfg.node_name}});
    api.patch(&cfg.node_name, &pp, &Patch::Apply(&obj))
        .await
        .map_err(kube_err)?;
    let inv = crate::inventory::collect(r, &cfg.thresholds)?;
    let worst = inv
        .block_devices
        .iter()
        .filter_map(|d| d.smart.as_ref()?.health.clone())
        .map(|h| match h.as_str() {
            "Critical" => Health::Critical,
            "Warning" => Health::Warning,
            _ => Health::Passed,
        })
        .max()
        .unwrap_or(Health::Passed);
    let cond = |t: &str, on: bool, reason: &str, msg: String| {
        json!({"type": t, "status": if on {"True"} else {"False"}, "reason": reason, "message": msg,
               "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()})
    };
    let status = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "TesseraNode", "status": {
        "summary": {"disks": inv.block_devices.len(), "gpus": inv.gpus.len()},
        "inventory": &inv,
        "conditions": [
            cond("Ready", true, "AgentReporting", format!("agent {} reporting", env!("CARGO_PKG_VERSION"))),
            cond("SmartWarning", worst >= Health::Warning, "Smart", "worst SMART verdict of the node's drives".into()),
            cond("SmartCritical", worst >= Health::Critical, "Smart", "worst SMART verdict of the node's drives".into()),
        ],
    }});
    api.patch_status(&cfg.node_name, &pp, &Patch::Apply(&status))
        .await
        .map_err(kube_err)?;
    Ok(inv)
}

/// The StoragePools the operator resolved to this node.
async fn my_pools(client: &Client, node: &str) -> Result<Vec<StoragePool>> {
    let api: Api<StoragePool> = Api::all(client.clone());
    let all = api.list(&ListParams::default()).await.map_err(kube_err)?;
    Ok(all
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .collect())
}

fn report_json(report: &AgentReport) -> serde_json::Value {
    let mut v = serde_json::to_value(report).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| {
            ["health", "capacity", "members", "operation", "conditions"].contains(&k.as_str())
        });
    }
    v
}

/// Apply one pool and write the agent's status fields.
pub async fn reconcile_pool(
    client: &Client,
    r: &dyn Runner,
    cfg: &Config,
    state: &mut AgentState,
    pool: &StoragePool,
) -> Result<()> {
    let api: Api<StoragePool> = Api::all(client.clone());
    let name = pool.name_any();
    let generation = pool.metadata.generation;
    let report = if pool.metadata.deletion_timestamp.is_some() {
        if pool.spec.deletion_policy != DeletionPolicy::Destroy {
            return Ok(()); // Retain: the operator removes the finalizer; nothing to do here.
        }
        // The operator keeps its finalizer until this says Destroyed=True.
        match crate::apply::destroy(r, pool, cfg.dry_run) {
            Ok(rep) => {
                warn!(pool = %name, condition = ?rep.condition("Destroyed").map(|c| &c.reason), "deletionPolicy Destroy");
                rep
            }
            Err(e) => {
                warn!(pool = %name, error = %e, "destroying the pool failed; retrying next pass");
                let mut rep = AgentReport::default();
                rep.conditions.push(condition(
                    "Destroyed",
                    false,
                    "DestroyFailed",
                    &e.to_string(),
                    generation,
                ));
                rep
            }
        }
    } else {
        let scrub_now = match &pool.spec.scrub_schedule {
            Some(s) => state
                .scrub_due(&name, s, Zoned::now().datetime())
                .unwrap_or_else(|e| {
                    warn!(pool = %name, error = %e, "scrubSchedule ignored");
                    false
                }),
            None => false,
        };
        if scrub_now {
            info!(pool = %name, "scrubSchedule fired: starting a scrub / parity check");
        }
        let mut snapshots_due = Vec::new();
        for ds in pool.spec.zfs.iter().flat_map(|z| &z.datasets) {
            let Some(policy) = &ds.snapshots else {
                continue;
            };
            let key = format!("{name}/snapshots/{}", ds.name);
            match state.scrub_due(&key, &policy.schedule, Zoned::now().datetime()) {
                Ok(true) => {
                    info!(pool = %name, dataset = %ds.name, "snapshot schedule fired");
                    snapshots_due.push(ds.name.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(pool = %name, dataset = %ds.name, error = %e, "snapshot schedule ignored")
                }
            }
        }
        let opts = ApplyOptions {
            dry_run: cfg.dry_run,
            scrub_now,
            chap: cfg.chap.clone(),
            snapshots_due,
        };
        let backend = serde_json::to_value(pool.spec.backend)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match apply(r, pool, &opts) {
            Ok(rep) => {
                let result = if !rep.plan.refusals.is_empty() {
                    "refused"
                } else if rep.plan.is_noop() {
                    "noop"
                } else {
                    "applied"
                };
                state
                    .metrics
                    .record_pool(&name, &backend, result, rep.observed.as_ref());
                rep
            }
            Err(e) => {
                state.metrics.record_pool(&name, &backend, "failed", None);
                let reason = match &e {
                    Error::Unsupported(_) => "BackendNotBuilt",
                    Error::ToolMissing(_) => "ToolMissing",
                    _ => "ApplyFailed",
                };
                warn!(pool = %name, error = %e, "apply failed");
                let mut rep = AgentReport::default();
                rep.conditions.push(condition(
                    "Applied",
                    false,
                    reason,
                    &e.to_string(),
                    generation,
                ));
                rep
            }
        }
    };
    let patch = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "StoragePool", "status": report_json(&report)});
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_err)?;
    info!(pool = %name, dry_run = cfg.dry_run, steps = report.plan.steps.len(), refusals = report.plan.refusals.len(), "reported");
    event_on_change(
        client,
        state,
        format!("pool/{name}"),
        &pool.object_ref(&()),
        pool_event(&report),
    )
    .await;
    Ok(())
}

fn condition(
    t: &str,
    ok: bool,
    reason: &str,
    msg: &str,
    generation: Option<i64>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: t.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: msg.into(),
        observed_generation: generation,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
    }
}

/// Whether the operator resolved policy `p` to node `node`.
fn selects(p: &GpuRaidPolicy, node: &str) -> bool {
    p.status
        .as_ref()
        .is_some_and(|s| s.nodes.iter().any(|n| n.node_name == node))
}

/// Mark this node's entry of every GpuRaidPolicy that selects it as applied.
pub async fn report_policies(client: &Client, cfg: &Config) -> Result<()> {
    let api: Api<GpuRaidPolicy> = Api::all(client.clone());
    let manager = format!("{MANAGER}-{}", cfg.node_name);
    for p in api.list(&ListParams::default()).await.map_err(kube_err)? {
        let selected = selects(&p, &cfg.node_name);
        let mine_applied = p.status.as_ref().is_some_and(|s| {
            s.nodes
                .iter()
                .any(|n| n.node_name == cfg.node_name && n.applied == Some(true))
        });
        if selected && !mine_applied {
            let patch = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "GpuRaidPolicy",
                "status": {"nodes": [{"nodeName": cfg.node_name, "applied": true}]}});
            api.patch_status(
                &p.name_any(),
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(kube_err)?;
            info!(policy = %p.name_any(), "policy active on this node");
        }
    }
    Ok(())
}

/// One pass over everything this node owns (with a fresh state: no metrics kept, no scrubs due).
pub async fn pass(client: &Client, r: &dyn Runner, cfg: &Config) -> Result<()> {
    let mut state = AgentState::new(&cfg.node_name);
    pass_with(client, r, cfg, &mut state).await
}

/// One pass, keeping metrics and scrub schedules in `state`.
pub async fn pass_with(
    client: &Client,
    r: &dyn Runner,
    cfg: &Config,
    state: &mut AgentState,
) -> Result<()> {
    let inv = publish_inventory(client, r, cfg).await?;
    state.metrics.record_inventory(&inv);
    // SMART verdicts of Warning or Critical become Events on this node's TesseraNode.
    let node_ref = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("tessera.dev/v1alpha1".into()),
        kind: Some("TesseraNode".into()),
        name: Some(cfg.node_name.clone()),
        ..Default::default()
    };
    for d in &inv.block_devices {
        let health = d.smart.as_ref().and_then(|s| s.health.clone());
        let draft = match health.as_deref() {
            Some(h @ ("Warning" | "Critical")) => Some((
                true,
                format!("Smart{h}"),
                format!(
                    "{} ({}): SMART {h}",
                    d.path,
                    d.model.clone().unwrap_or_default()
                ),
            )),
            _ => None,
        };
        event_on_change(client, state, format!("drive/{}", d.path), &node_ref, draft).await;
    }
    let pools = my_pools(client, &cfg.node_name).await?;
    // `arcMax` is node-wide: pools that disagree each set it in turn; say so.
    let arc: std::collections::BTreeSet<String> = pools
        .iter()
        .filter_map(|p| p.spec.zfs.as_ref()?.arc_max.as_ref().map(|q| q.0.clone()))
        .collect();
    if arc.len() > 1 {
        warn!(values = ?arc, "ZFS pools on this node ask for different arcMax (a node-wide module parameter); the last one applied wins");
    }
    for pool in pools {
        if let Err(e) = reconcile_pool(client, r, cfg, state, &pool).await {
            warn!(pool = %pool.name_any(), error = %e, "pool reconcile failed");
        }
    }
    report_policies(client, cfg).await?;
    run_verify_jobs(client, r, cfg, state).await
}

/// For every GpuRaidPolicy selecting this node whose `verifySchedule` fired since the last look:
/// verify the parity of each MD pool of the node with the engine (crate::verify), then write the
/// node's `lastVerify` and its throughput row into the policy status and an Event on the pool.
pub async fn run_verify_jobs(
    client: &Client,
    r: &dyn Runner,
    cfg: &Config,
    state: &mut AgentState,
) -> Result<()> {
    let api: Api<GpuRaidPolicy> = Api::all(client.clone());
    let manager = format!("{MANAGER}-{}", cfg.node_name);
    for p in api.list(&ListParams::default()).await.map_err(kube_err)? {
        let selected = selects(&p, &cfg.node_name);
        let Some(schedule) = p.spec.verify_schedule.clone().filter(|_| selected) else {
            continue;
        };
        let pname = p.name_any();
        let due = state
            .scrub_due(
                &format!("policy/{pname}"),
                &schedule,
                Zoned::now().datetime(),
            )
            .unwrap_or_else(|e| {
                warn!(policy = %pname, error = %e, "verifySchedule ignored");
                false
            });
        if !due {
            continue;
        }
        let repair = p.spec.repair_mismatches.unwrap_or(false);
        for pool in my_pools(client, &cfg.node_name).await? {
            if pool.metadata.deletion_timestamp.is_some()
                || (pool.spec.md.is_none() && pool.spec.lvm.is_none())
            {
                continue;
            }
            info!(policy = %pname, pool = %pool.name_any(), "verifySchedule fired: parity verify");
            let outcomes: Vec<Result<crate::verify::VerifyOutcome>> =
                if let Some(spec) = &pool.spec.md {
                    vec![crate::verify::verify_md(r, spec, cfg.dry_run, repair)]
                } else if let Some(spec) = &pool.spec.lvm {
                    match crate::verify::verify_lvm(r, spec, cfg.dry_run, repair) {
                        Ok(v) => v.into_iter().map(Ok).collect(),
                        Err(e) => vec![Err(e)],
                    }
                } else {
                    Vec::new()
                };
            for outcome in outcomes {
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let (last, row, draft) = match outcome {
                    Ok(o) => (
                        {
                            let label = if pool.spec.lvm.is_some() {
                                format!("{}: {}", pool.name_any(), o.array)
                            } else {
                                pool.name_any()
                            };
                            let mut v = json!({"time": now, "pool": label, "backend": o.backend, "stripes": o.stripes,
                               "mismatches": o.mismatches, "gbPerSecond": o.gb_per_second});
                            if let Some(after) = o.mismatches_after_repair {
                                v["repaired"] = json!(o.repaired);
                                v["mismatchesAfterRepair"] = json!(after);
                            }
                            v
                        },
                        Some(
                            json!({"nodeName": cfg.node_name, "backend": o.backend, "code": o.code,
                                "gbPerSecond": o.gb_per_second}),
                        ),
                        if o.mismatches == 0 {
                            (
                                false,
                                "ParityVerified".to_string(),
                                format!(
                                    "{} {}: {} stripes consistent, {:.2} GB/s ({})",
                                    o.array, o.code, o.stripes, o.gb_per_second, o.backend
                                ),
                            )
                        } else if o.mismatches_after_repair == Some(0) {
                            (
                                true,
                                "ParityRepaired".to_string(),
                                format!(
                                    "{} {}: {} inconsistent 4 KiB pages rewritten from parity ({}); consistent now",
                                    o.array,
                                    o.code,
                                    o.repaired.len(),
                                    o.repaired.join(", ")
                                ),
                            )
                        } else {
                            (
                                true,
                                "ParityMismatch".to_string(),
                                format!(
                                    "{} {}: {} inconsistent 4 KiB pages in {} stripes; blamed: {:?}",
                                    o.array, o.code, o.mismatches, o.stripes, o.blamed
                                ),
                            )
                        },
                    ),
                    Err(e) => (
                        json!({"time": now, "pool": pool.name_any(), "backend": "", "stripes": 0,
                           "mismatches": 0, "gbPerSecond": 0.0, "error": e.to_string()}),
                        None,
                        (true, "ParityVerifyFailed".to_string(), e.to_string()),
                    ),
                };
                let mut st = json!({"nodes": [{"nodeName": cfg.node_name, "applied": true, "lastVerify": last}]});
                if let Some(row) = row {
                    st["throughput"] = json!([row]);
                }
                let patch = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "GpuRaidPolicy", "status": st});
                api.patch_status(
                    &pname,
                    &PatchParams::apply(&manager).force(),
                    &Patch::Apply(&patch),
                )
                .await
                .map_err(kube_err)?;
                // Every verify is news (a schedule fired): forget the last reason first.
                let subject = format!("verify/{}", pool.name_any());
                state.last_event.remove(&subject);
                event_on_change(client, state, subject, &pool.object_ref(&()), Some(draft)).await;
            }
        }
    }
    Ok(())
}

/// Run until SIGINT/SIGTERM: a pass every `interval`, and one soon after any StoragePool or
/// GpuRaidPolicy changes.
pub async fn run(client: Client, r: &dyn Runner, cfg: Config) -> Result<()> {
    let pools = watcher(
        Api::<StoragePool>::all(client.clone()),
        watcher::Config::default(),
    )
    .touched_objects()
    .map(|_| ());
    let policies = watcher(
        Api::<GpuRaidPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .touched_objects()
    .map(|_| ());
    let mut changes = futures::stream::select(pools, policies).boxed();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Read {
            path: "signal handler".into(),
            source: e,
        })?;
    let mut state = AgentState::new(&cfg.node_name);
    if let Some(addr) = cfg.listen {
        let bound = crate::metrics::serve(addr, state.metrics.clone()).await?;
        info!(%bound, "serving /metrics and /healthz");
    }
    loop {
        if let Err(e) = pass_with(&client, r, &cfg, &mut state).await {
            warn!(error = %e, "pass failed");
        }
        let sleep = tokio::time::sleep(cfg.interval);
        tokio::select! {
            _ = sleep => {}
            Some(()) = changes.next() => {
                // Coalesce a burst of events into one pass.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::civil::date;

    #[test]
    fn a_scrub_is_due_once_when_the_schedule_passed_between_two_looks() {
        let mut st = AgentState::new("n");
        st.started = date(2026, 11, 30).at(22, 0, 0, 0);
        let monthly = "0 3 1 * *";
        // first look after the agent started, before 03:00 on the 1st: not due
        assert!(
            !st.scrub_due("llm", monthly, date(2026, 12, 1).at(2, 59, 0, 0))
                .unwrap()
        );
        // the next look after 03:00: due, once
        assert!(
            st.scrub_due("llm", monthly, date(2026, 12, 1).at(3, 0, 30, 0))
                .unwrap()
        );
        assert!(
            !st.scrub_due("llm", monthly, date(2026, 12, 1).at(3, 1, 0, 0))
                .unwrap()
        );
        // another pool keeps its own clock (from the agent's start)
        assert!(
            st.scrub_due("other", monthly, date(2026, 12, 1).at(3, 1, 0, 0))
                .unwrap()
        );
        assert!(
            st.scrub_due("bad", "not a cron", date(2026, 12, 1).at(3, 1, 0, 0))
                .is_err()
        );
    }

    use crate::plan::Step;

    fn report(conds: &[(&str, bool, &str)], steps: usize) -> AgentReport {
        let mut r = AgentReport::default();
        for (t, on, reason) in conds {
            r.conditions.push(condition(t, *on, reason, "msg", Some(1)));
        }
        for i in 0..steps {
            r.plan.steps.push(Step::new(format!("s{i}"), &["true"]));
        }
        r
    }

    #[test]
    fn pool_events_say_what_changed_and_stay_quiet_otherwise() {
        let ev = |r: AgentReport| pool_event(&r).map(|(w, reason, _)| (w, reason));
        assert_eq!(
            ev(report(
                &[
                    ("Applied", true, "Applied"),
                    ("Degraded", false, "AllMembersActive")
                ],
                0
            )),
            None
        );
        assert_eq!(
            ev(report(
                &[("Applied", true, "Applied"), ("Degraded", false, "x")],
                3
            )),
            Some((false, "Applied".into()))
        );
        assert_eq!(
            ev(report(&[("Applied", false, "DeviceHasSignature")], 0)),
            Some((true, "DeviceHasSignature".into()))
        );
        assert_eq!(
            ev(report(
                &[
                    ("Applied", true, "Applied"),
                    ("Degraded", true, "MembersMissing")
                ],
                0
            )),
            Some((true, "PoolDegraded".into()))
        );
        assert_eq!(
            ev(report(&[("Destroyed", true, "Destroyed")], 2)),
            Some((false, "PoolDestroyed".into()))
        );
        assert_eq!(ev(report(&[("Destroyed", true, "NotPresent")], 0)), None);
        assert_eq!(
            ev(report(&[("Destroyed", false, "DestroyFailed")], 0)),
            Some((true, "DestroyFailed".into()))
        );
    }
}
