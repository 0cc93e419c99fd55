//! The GpuRaidPolicy controller: validate, resolve the nodes and GPUs it selects from the
//! TesseraNode inventories, report Accepted / Applied.
//!
//! `status.nodes` is a list keyed by `nodeName`: the operator owns `nodeName` and `gpus` of each
//! entry, and each node's agent owns `applied` of its own entry (and its `throughput` rows), all
//! through server-side apply.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tessera_crds::common::condition;
use tessera_crds::{GpuRaidPolicy, TesseraNode};
use tracing::warn;

use crate::{Context, Error, Result, conditions, validate, write_status};

const CONTROLLER: &str = "gpuraidpolicy";
pub async fn run(ctx: Arc<Context>) {
    let api: Api<GpuRaidPolicy> = Api::all(ctx.client.clone());
    let nodes: Api<TesseraNode> = Api::all(ctx.client.clone());
    let (reader, writer) = kube::runtime::reflector::store();
    Controller::for_stream(crate::lean_stream(api, writer), reader)
        // Inventory changes can change which GPUs a policy selects: look at every policy again.
        .reconcile_all_on(
            watcher(nodes, watcher::Config::default())
                .filter_map(|e| futures::future::ready(e.ok().map(|_| ()))),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(_p: Arc<GpuRaidPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(CONTROLLER, err);
    warn!(error = %err, "gpuraidpolicy reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(p: Arc<GpuRaidPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let generation = p.metadata.generation;
    let old = p.status.clone().unwrap_or_default();
    let mut conds: Vec<_> = old
        .conditions
        .iter()
        .filter(|c| c.type_ == condition::ACCEPTED || c.type_ == condition::APPLIED)
        .cloned()
        .collect();
    let findings = validate::gpu_raid_policy(&p.spec);
    let mut selected = Vec::new();
    if findings.errors.is_empty() {
        conditions::set(
            &mut conds,
            condition::ACCEPTED,
            true,
            "Valid",
            "policy accepted",
            generation,
        );
        let node_api: Api<Node> = Api::all(ctx.client.clone());
        let sel = p.spec.node_selector.clone().unwrap_or_default();
        let selector = sel
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let node_names: BTreeSet<String> = node_api
            .list(&ListParams::default().labels(&selector))
            .await?
            .into_iter()
            .map(|n| n.name_any())
            .collect();
        let tns: Api<TesseraNode> = Api::all(ctx.client.clone());
        for tn in tns.list(&ListParams::default()).await? {
            if !node_names.contains(&tn.name_any()) {
                continue;
            }
            let gpus: Vec<String> = tn
                .status
                .as_ref()
                .and_then(|s| s.inventory.as_ref())
                .map(|i| {
                    i.gpus
                        .iter()
                        .filter(|g| p.spec.gpu_selector.matches(g.index, &g.uuid, &g.model))
                        .map(|g| g.uuid.clone())
                        .collect()
                })
                .unwrap_or_default();
            if !gpus.is_empty() {
                selected.push((tn.name_any(), gpus));
            }
        }
        let applied_on: BTreeSet<&str> = old
            .nodes
            .iter()
            .filter(|n| n.applied == Some(true))
            .map(|n| n.node_name.as_str())
            .collect();
        let pending: Vec<&str> = selected
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !applied_on.contains(n))
            .collect();
        if selected.is_empty() {
            conditions::set(
                &mut conds,
                condition::APPLIED,
                false,
                "NoMatchingGpus",
                "no node with a GPU matches the node and GPU selectors",
                generation,
            );
        } else if pending.is_empty() {
            conditions::set(
                &mut conds,
                condition::APPLIED,
                true,
                "Applied",
                &format!("active on {} node(s)", selected.len()),
                generation,
            );
        } else {
            conditions::set(
                &mut conds,
                condition::APPLIED,
                false,
                "WaitingForNodeAgents",
                &format!("not yet active on: {}", pending.join(", ")),
                generation,
            );
        }
    } else {
        conditions::set(
            &mut conds,
            condition::ACCEPTED,
            false,
            "InvalidSpec",
            &findings.errors.join("; "),
            generation,
        );
        conditions::set(
            &mut conds,
            condition::APPLIED,
            false,
            "InvalidSpec",
            "the policy is not valid",
            generation,
        );
    }
    let nodes: Vec<_> = selected
        .iter()
        .map(|(n, g)| json!({"nodeName": n, "gpus": g}))
        .collect();
    let status = json!({
        "observedGeneration": generation,
        "nodeCount": selected.len(),
        "nodes": nodes,
        "conditions": conds,
    });
    let api: Api<GpuRaidPolicy> = Api::all(ctx.client.clone());
    let same = old.observed_generation == generation
        && old.node_count == Some(selected.len() as i32)
        && old
            .conditions
            .iter()
            .filter(|c| c.type_ == condition::ACCEPTED || c.type_ == condition::APPLIED)
            .eq(conds.iter())
        && old
            .nodes
            .iter()
            .map(|n| (&n.node_name, &n.gpus))
            .eq(selected.iter().map(|(n, g)| (n, g)));
    if !same {
        write_status(&api, &p.name_any(), status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}
