//! The StoragePool controller: validate what CEL cannot, resolve the node, keep the node-agent
//! DaemonSet in shape, and aggregate the node agent's report into phase and conditions.
//!
//! Status ownership (server-side apply field managers):
//! - `tessera-operator`: `observedGeneration`, `nodeName`, `phase`, conditions `Ready` and `Accepted`;
//! - `tessera-node-agent`: `health`, `capacity`, `members`, `operation`, conditions `Applied`,
//!   `Degraded`, `Progressing`, `ParityOffloadActive`, `Destroyed`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tessera_crds::StoragePool;
use tessera_crds::common::condition;
use tessera_crds::storage_pool::{DeletionPolicy, PoolPhase};
use tracing::{info, warn};

use crate::{Context, Error, Result, conditions, publish_event, validate, write_status};

const CONTROLLER: &str = "storagepool";
/// Condition types the operator owns on a StoragePool.
pub const OPERATOR_CONDITIONS: [&str; 2] = [condition::READY, "Accepted"];

pub async fn run(ctx: Arc<Context>) {
    let api: Api<StoragePool> = Api::all(ctx.client.clone());
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    // Node label changes (and new nodes) can change which node a pool resolves to. Heartbeats are
    // status-only and filtered out by the label predicate.
    let node_changes = watcher(nodes, watcher::Config::default())
        .touched_objects()
        .predicate_filter(predicates::labels, Default::default())
        .filter_map(|e| futures::future::ready(e.ok().map(|_| ())));
    let (reader, writer) = kube::runtime::reflector::store();
    Controller::for_stream(crate::lean_stream(api, writer), reader)
        .reconcile_all_on(node_changes)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(_sp: Arc<StoragePool>, err: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Waiting(why) = err {
        info!(%why, "storagepool waiting");
        return Action::requeue(Duration::from_secs(2));
    }
    ctx.metrics.failure(CONTROLLER, err);
    warn!(error = %err, "storagepool reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(sp: Arc<StoragePool>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    crate::ensure_node_agent_daemonset(&ctx).await;
    let api: Api<StoragePool> = Api::all(ctx.client.clone());
    let fin = tessera_crds::finalizer("storagepool");
    finalizer(&api, &fin, sp, |event| async {
        match event {
            Finalizer::Apply(sp) => apply(&sp, &ctx, &api).await,
            Finalizer::Cleanup(sp) => cleanup(&sp, &ctx, &api).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The node a pool lives on, or why none.
pub async fn resolve_node(
    ctx: &Context,
    sp: &StoragePool,
) -> Result<Result<String, (&'static str, String)>> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    if let Some(n) = &sp.spec.node_name {
        return Ok(match nodes.get_opt(n).await? {
            Some(_) => Ok(n.clone()),
            None => Err(("NodeNotFound", format!("node {n} does not exist"))),
        });
    }
    let sel: BTreeMap<String, String> = sp.spec.node_selector.clone().unwrap_or_default();
    let selector = sel
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let matched = nodes.list(&ListParams::default().labels(&selector)).await?;
    Ok(match matched.items.len() {
        1 => Ok(matched.items[0].name_any()),
        0 => Err((
            "NodeNotFound",
            format!("no node matches the selector {selector}"),
        )),
        n => Err((
            "NodeSelectorAmbiguous",
            format!("{n} nodes match the selector {selector}; it must select one"),
        )),
    })
}

fn find<'a>(conds: &'a [Condition], t: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == t)
}

/// Phase and Ready condition from what the node agent reported. Returns (phase, ready, reason, message).
pub fn aggregate(
    generation: Option<i64>,
    agent: &[Condition],
) -> (PoolPhase, bool, String, String) {
    let applied = find(agent, "Applied");
    match applied {
        None => (
            PoolPhase::Pending,
            false,
            "WaitingForNodeAgent".into(),
            "the node agent has not reported yet".into(),
        ),
        Some(a) if a.observed_generation.is_some() && a.observed_generation < generation => (
            PoolPhase::Creating,
            false,
            "WaitingForNodeAgent".into(),
            "the node agent has not applied the current generation yet".into(),
        ),
        Some(a) if a.status != "True" => (
            PoolPhase::Failed,
            false,
            a.reason.clone(),
            a.message.clone(),
        ),
        Some(_) => {
            if let Some(d) = find(agent, condition::DEGRADED).filter(|d| d.status == "True") {
                (
                    PoolPhase::Degraded,
                    true,
                    "Degraded".into(),
                    d.message.clone(),
                )
            } else if let Some(p) =
                find(agent, condition::PROGRESSING).filter(|p| p.status == "True")
            {
                (
                    PoolPhase::Ready,
                    true,
                    "Ready".into(),
                    format!("ready; in progress: {}", p.message),
                )
            } else {
                (
                    PoolPhase::Ready,
                    true,
                    "Ready".into(),
                    "the pool matches its spec".into(),
                )
            }
        }
    }
}

async fn apply(sp: &StoragePool, ctx: &Context, api: &Api<StoragePool>) -> Result<Action> {
    let name = sp.name_any();
    let generation = sp.metadata.generation;
    let old = sp.status.clone().unwrap_or_default();
    let mut mine: Vec<Condition> = old
        .conditions
        .iter()
        .filter(|c| OPERATOR_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    let findings = validate::storage_pool(&sp.spec);
    let first_look =
        find(&old.conditions, "Accepted").and_then(|c| c.observed_generation) != generation;
    if first_look {
        for w in &findings.warnings {
            publish_event(
                ctx,
                &sp.object_ref(&()),
                EventType::Warning,
                "SpecWarning",
                w.clone(),
            )
            .await;
        }
    }
    let (phase, node, ready, reason, message);
    if !findings.errors.is_empty() {
        conditions::set(
            &mut mine,
            "Accepted",
            false,
            "InvalidSpec",
            &findings.errors.join("; "),
            generation,
        );
        if first_look {
            publish_event(
                ctx,
                &sp.object_ref(&()),
                EventType::Warning,
                "InvalidSpec",
                findings.errors.join("; "),
            )
            .await;
        }
        (phase, node, ready, reason, message) = (
            PoolPhase::Failed,
            None,
            false,
            "InvalidSpec".to_string(),
            findings.errors.join("; "),
        );
    } else {
        let accepted_msg = if findings.warnings.is_empty() {
            "spec accepted".to_string()
        } else {
            format!("accepted with warnings: {}", findings.warnings.join("; "))
        };
        conditions::set(
            &mut mine,
            "Accepted",
            true,
            "Valid",
            &accepted_msg,
            generation,
        );
        match resolve_node(ctx, sp).await? {
            Err((r, m)) => {
                (phase, node, ready, reason, message) =
                    (PoolPhase::Pending, None, false, r.to_string(), m);
            }
            Ok(n) => {
                let (p, rd, r, m) = aggregate(generation, &old.conditions);
                (phase, node, ready, reason, message) = (p, Some(n), rd, r, m);
            }
        }
    }
    conditions::set(
        &mut mine,
        condition::READY,
        ready,
        &reason,
        &message,
        generation,
    );
    if old.phase != Some(phase) {
        let kind = if matches!(phase, PoolPhase::Failed | PoolPhase::Degraded) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish_event(
            ctx,
            &sp.object_ref(&()),
            kind,
            &format!("Pool{phase:?}"),
            message.clone(),
        )
        .await;
    }
    let unchanged = old.phase == Some(phase)
        && old.node_name == node
        && old.observed_generation == generation
        && OPERATOR_CONDITIONS
            .iter()
            .all(|t| find(&old.conditions, t) == find(&mine, t));
    if !unchanged {
        write_status(
            api,
            &name,
            json!({
                "observedGeneration": generation,
                "nodeName": node,
                "phase": phase,
                "conditions": mine,
            }),
        )
        .await?;
    }
    // Pools waiting for a node or the agent are looked at again sooner.
    let again = if ready { 60 } else { 10 };
    Ok(Action::requeue(Duration::from_secs(again)))
}

async fn cleanup(sp: &StoragePool, ctx: &Context, api: &Api<StoragePool>) -> Result<Action> {
    let oref = sp.object_ref(&());
    match sp.spec.deletion_policy {
        DeletionPolicy::Retain => {
            publish_event(
                ctx,
                &oref,
                EventType::Normal,
                "PoolRetained",
                "deletionPolicy Retain: the pool and its data stay on the node".into(),
            )
            .await;
            Ok(Action::await_change())
        }
        DeletionPolicy::Destroy => {
            let conds = sp
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            if find(&conds, "Destroyed").is_some_and(|c| c.status == "True") {
                publish_event(
                    ctx,
                    &oref,
                    EventType::Normal,
                    "PoolDestroyed",
                    "the node agent destroyed the pool".into(),
                )
                .await;
                return Ok(Action::await_change());
            }
            if sp.status.as_ref().and_then(|s| s.phase) != Some(PoolPhase::Deleting) {
                write_status(api, &sp.name_any(), json!({"phase": PoolPhase::Deleting})).await?;
                publish_event(
                    ctx,
                    &oref,
                    EventType::Normal,
                    "DestroyRequested",
                    "deletionPolicy Destroy: waiting for the node agent to destroy the pool".into(),
                )
                .await;
            }
            Err(Error::Waiting(format!(
                "node agent has not confirmed destroying {}",
                sp.name_any()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn cond(t: &str, s: &str, reason: &str, generation: i64) -> Condition {
        Condition {
            type_: t.into(),
            status: s.into(),
            reason: reason.into(),
            message: format!("{t} {s}"),
            observed_generation: Some(generation),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        }
    }

    #[test]
    fn aggregation_follows_the_agent_report() {
        assert_eq!(aggregate(Some(1), &[]).0, PoolPhase::Pending);
        assert_eq!(
            aggregate(Some(2), &[cond("Applied", "True", "Applied", 1)]).0,
            PoolPhase::Creating
        );
        let failed = aggregate(
            Some(1),
            &[cond("Applied", "False", "DeviceHasSignature", 1)],
        );
        assert_eq!(
            (failed.0, failed.1, failed.2.as_str()),
            (PoolPhase::Failed, false, "DeviceHasSignature")
        );
        let deg = aggregate(
            Some(1),
            &[
                cond("Applied", "True", "Applied", 1),
                cond("Degraded", "True", "MemberFaulted", 1),
            ],
        );
        assert_eq!((deg.0, deg.1), (PoolPhase::Degraded, true));
        assert_eq!(
            aggregate(Some(1), &[cond("Applied", "True", "Applied", 1)]).0,
            PoolPhase::Ready
        );
    }
}
