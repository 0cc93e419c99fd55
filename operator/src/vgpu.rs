//! The VGpuClaim controller: allocate (best fit, no over-commit), bind to consuming pods, release.
//!
//! Pods consume a claim through the annotation [`CLAIM_ANNOTATION`] (`tessera.dev/vgpu-claim:
//! <claim name>`, same namespace). Once pods reserved an allocation and all of them are gone, the
//! allocation is released and the claim ends in phase `Released` (a released claim is not
//! allocated again: create a new claim, as with a spent DRA claim).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tessera_crds::common::condition;
use tessera_crds::vgpu_claim::{Allocation, ClaimPhase, ReservedFor};
use tessera_crds::{TesseraNode, VGpuClaim, parse_quantity};
use tracing::{info, warn};

use crate::allocator::{GpuCapacity, LEDGER_ANNOTATION, Ledger, LedgerEntry, Request, share_id};
use crate::conditions;
use crate::{Context, Error, Result, write_status};

/// Annotation by which a Pod consumes a VGpuClaim of its namespace.
pub const CLAIM_ANNOTATION: &str = "tessera.dev/vgpu-claim";
const CONTROLLER: &str = "vgpuclaim";
/// Retries of a ledger write that lost a resourceVersion race, before requeueing.
const LEDGER_RETRIES: usize = 32;

/// Run the controller until the stream ends.
pub async fn run(ctx: Arc<Context>, nodes: Store<TesseraNode>) {
    let claims: Api<VGpuClaim> = Api::all(ctx.client.clone());
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let (alloc_tx, alloc_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(VGpuContext {
        ctx,
        nodes,
        ledger_lock: Default::default(),
        alloc_tx,
    });
    tokio::spawn(allocator_task(ctx.clone(), alloc_rx));
    let (reader, writer) = kube::runtime::reflector::store();
    Controller::for_stream(crate::lean_stream(claims, writer), reader)
        // Bounded: a burst of claims waits in the controller's queue (cheap), not as thousands of
        // in-flight reconciles (memory), and each allocator batch stays small enough to answer fast.
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .watches(pods, watcher::Config::default(), |pod| {
            let ns = pod.namespace()?;
            let claim = pod.annotations().get(CLAIM_ANNOTATION)?.clone();
            Some(ObjectRef::<VGpuClaim>::new(&claim).within(&ns))
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The shared context plus the TesseraNode cache (inventories only; ledgers are always re-read).
pub struct VGpuContext {
    pub ctx: Arc<Context>,
    pub nodes: Store<TesseraNode>,
    /// Serializes this replica's ledger writes (so its own reconciles never race each other) and
    /// remembers the TesseraNode objects it last wrote, with their resourceVersion: the next write
    /// starts from them instead of a GET, and the choice of GPU sees them before the watch cache
    /// does. Correctness still rests on the resourceVersion guard: a stale entry only costs a 409.
    pub ledger_lock: tokio::sync::Mutex<std::collections::HashMap<String, TesseraNode>>,
    /// Allocation requests to the batch allocator (see [`allocator_task`]).
    pub alloc_tx: tokio::sync::mpsc::UnboundedSender<AllocRequest>,
}

/// Where a claim was placed: (node, share id, ledger entry).
pub type Placed = (String, String, LedgerEntry);

/// One claim waiting for a GPU.
pub struct AllocRequest {
    uid: String,
    namespace: String,
    name: String,
    req: Request,
    reply: tokio::sync::oneshot::Sender<Result<Option<Placed>>>,
}

/// VGpuClaim reconciles running at once.
const RECONCILE_CONCURRENCY: u16 = 64;
/// Most claims placed in one batch: every reconcile that can be waiting.
const ALLOC_BATCH: usize = RECONCILE_CONCURRENCY as usize;

/// Places claims in batches: every reconcile that needs a GPU queues its request here; the task
/// takes whatever is queued, places all of it against one parse of the ledgers (best fit, in
/// arrival order, usage updated as it goes), and writes each touched node's ledger once. A burst of
/// N claims then costs a few ledger writes per node instead of N serialized read-modify-writes.
/// Each write still goes through the resourceVersion guard and re-checks every entry against the
/// fresh ledger, so nothing is over-committed when another replica or a release wrote meanwhile.
async fn allocator_task(
    ctx: Arc<VGpuContext>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<AllocRequest>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < ALLOC_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let answers = allocate_batch(&ctx, &batch).await;
        for (r, a) in batch.into_iter().zip(answers) {
            let _ = r.reply.send(a);
        }
    }
}

async fn allocate_batch(ctx: &VGpuContext, batch: &[AllocRequest]) -> Vec<Result<Option<Placed>>> {
    let mut answers: Vec<Option<Result<Option<Placed>>>> = batch.iter().map(|_| None).collect();
    let mut written = ctx.ledger_lock.lock().await;
    let mut ledgers: BTreeMap<String, Ledger> = BTreeMap::new();
    let mut gpus = Vec::new();
    for n in ctx.nodes.state() {
        gpus.extend(gpus_of(&n));
        let name = n.name_any();
        let ledger = match written.get(&name) {
            Some(w) => ledger_of(w),
            None => ledger_of(&n),
        };
        match ledger {
            Ok(l) => {
                ledgers.insert(name, l);
            }
            Err(e) => warn!(node = %name, error = %e, "skipping a node with an unreadable ledger"),
        }
    }
    // Claims already in a ledger (a crash between the ledger write and the status write).
    let wanted: std::collections::HashSet<&str> = batch.iter().map(|r| r.uid.as_str()).collect();
    let mut placed: std::collections::HashMap<&str, Placed> = std::collections::HashMap::new();
    for (node, l) in &ledgers {
        for (sid, e) in l
            .shares
            .iter()
            .filter(|(_, e)| wanted.contains(e.claim_uid.as_str()))
        {
            placed.insert(e.claim_uid.as_str(), (node.clone(), sid.clone(), e.clone()));
        }
    }
    let mut usage = crate::allocator::usage_of(&ledgers);
    let mut per_node: BTreeMap<String, Vec<(usize, String, LedgerEntry)>> = BTreeMap::new();
    for (i, r) in batch.iter().enumerate() {
        if let Some(p) = placed.get(r.uid.as_str()) {
            answers[i] = Some(Ok(Some(p.clone())));
            continue;
        }
        let Some(place) = crate::allocator::best_fit_usage(&gpus, &usage, &r.req) else {
            answers[i] = Some(Ok(None));
            continue;
        };
        let slot = usage.entry(place.gpu.uuid.clone()).or_insert((0, 0));
        slot.0 += r.req.memory_bytes;
        slot.1 += u32::from(r.req.compute_share);
        let entry = LedgerEntry {
            claim_uid: r.uid.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            gpu_uuid: place.gpu.uuid.clone(),
            memory_bytes: r.req.memory_bytes,
            compute_share: r.req.compute_share,
        };
        per_node
            .entry(place.gpu.node.clone())
            .or_default()
            .push((i, share_id(&r.uid), entry));
    }
    let capacity: std::collections::HashMap<&str, u128> = gpus
        .iter()
        .map(|g| (g.uuid.as_str(), g.memory_bytes))
        .collect();
    for (node, items) in per_node {
        let mut outcome: Vec<(usize, Option<(String, LedgerEntry)>)> = Vec::new();
        let res = update_ledger_locked(ctx, &mut written, &node, |l| {
            outcome.clear();
            let mut changed = false;
            for (i, sid, entry) in &items {
                if let Some((s, e)) = l.find_claim(&entry.claim_uid) {
                    outcome.push((*i, Some((s.clone(), e.clone()))));
                    continue;
                }
                let (mem, share) = l.used(&entry.gpu_uuid);
                let cap = capacity.get(entry.gpu_uuid.as_str()).copied().unwrap_or(0);
                if mem + entry.memory_bytes <= cap && share + u32::from(entry.compute_share) <= 100
                {
                    l.shares.insert(sid.clone(), entry.clone());
                    outcome.push((*i, Some((sid.clone(), entry.clone()))));
                    changed = true;
                } else {
                    outcome.push((*i, None)); // filled by someone else meanwhile
                }
            }
            changed
        })
        .await;
        match res {
            Ok(_) => {
                for (i, o) in outcome.drain(..) {
                    answers[i] = Some(match o {
                        Some((sid, e)) => Ok(Some((node.clone(), sid, e))),
                        None => Err(Error::Conflict(format!(
                            "GPU on node {node} filled concurrently; placing again"
                        ))),
                    });
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (i, _, _) in &items {
                    answers[*i] = Some(Err(Error::Ledger {
                        node: node.clone(),
                        message: msg.clone(),
                    }));
                }
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(Error::Conflict("claim left unplaced".into()))))
        .collect()
}

fn error_policy(_claim: Arc<VGpuClaim>, err: &Error, ctx: Arc<VGpuContext>) -> Action {
    ctx.ctx.metrics.failure(CONTROLLER, err);
    warn!(error = %err, "vgpuclaim reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(claim: Arc<VGpuClaim>, ctx: Arc<VGpuContext>) -> Result<Action> {
    let _timer = ctx.ctx.metrics.reconcile(CONTROLLER);
    let ns = claim.namespace().unwrap_or_else(|| "default".into());
    let api: Api<VGpuClaim> = Api::namespaced(ctx.ctx.client.clone(), &ns);
    let fin = tessera_crds::finalizer("vgpuclaim");
    finalizer(&api, &fin, claim, |event| async {
        match event {
            Finalizer::Apply(c) => apply(&c, &ctx, &api).await,
            Finalizer::Cleanup(c) => cleanup(&c, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn ledger_of(node: &TesseraNode) -> Result<Ledger> {
    match node.annotations().get(LEDGER_ANNOTATION) {
        None => Ok(Ledger::default()),
        Some(s) => serde_json::from_str(s).map_err(|e| Error::Ledger {
            node: node.name_any(),
            message: format!("unreadable annotation {LEDGER_ANNOTATION}: {e}"),
        }),
    }
}

fn gpus_of(node: &TesseraNode) -> Vec<GpuCapacity> {
    let name = node.name_any();
    node.status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .map(|inv| {
            inv.gpus
                .iter()
                .filter_map(|g| {
                    Some(GpuCapacity {
                        node: name.clone(),
                        index: g.index,
                        uuid: g.uuid.clone(),
                        model: g.model.clone(),
                        memory_bytes: parse_quantity(&g.memory.0).ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where the claim is allocated: (node, share id, entry), looked up in the fresh ledger of the node
/// its status names.
async fn find_allocation(
    claim: &VGpuClaim,
    ctx: &VGpuContext,
) -> Result<Option<(String, String, LedgerEntry)>> {
    let uid = claim.uid().unwrap_or_default();
    let nodes_api: Api<TesseraNode> = Api::all(ctx.ctx.client.clone());
    if let Some(node) = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .map(|a| a.node_name.clone())
    {
        if let Some(n) = nodes_api.get_opt(&node).await?
            && let Some((sid, e)) = ledger_of(&n)?.find_claim(&uid)
        {
            return Ok(Some((node, sid.clone(), e.clone())));
        }
        return Ok(None);
    }
    // No allocation in the status: the allocator adopts a ledger entry left by a crash (it indexes
    // every ledger once per batch instead of every reconcile scanning them all).
    Ok(None)
}

/// Apply `change` to a node's ledger with optimistic concurrency (re-read and retry on 409).
/// `change` returns false to abandon the write (for example when the GPU no longer fits).
async fn update_ledger<F>(ctx: &VGpuContext, node: &str, change: F) -> Result<bool>
where
    F: FnMut(&mut Ledger) -> bool,
{
    let mut written = ctx.ledger_lock.lock().await;
    update_ledger_locked(ctx, &mut written, node, change).await
}

async fn update_ledger_locked<F>(
    ctx: &VGpuContext,
    written: &mut std::collections::HashMap<String, TesseraNode>,
    node: &str,
    mut change: F,
) -> Result<bool>
where
    F: FnMut(&mut Ledger) -> bool,
{
    let api: Api<TesseraNode> = Api::all(ctx.ctx.client.clone());
    for attempt in 0..LEDGER_RETRIES {
        let cached = if attempt == 0 {
            written.get(node).cloned()
        } else {
            None
        };
        let mut obj = match cached {
            Some(o) => o,
            None => match api.get_opt(node).await? {
                Some(o) => o,
                None => {
                    return Err(Error::Ledger {
                        node: node.into(),
                        message: "TesseraNode is gone".into(),
                    });
                }
            },
        };
        let mut ledger = ledger_of(&obj)?;
        if !change(&mut ledger) {
            return Ok(false);
        }
        obj.annotations_mut()
            .insert(LEDGER_ANNOTATION.into(), serde_json::to_string(&ledger)?);
        // replace() carries metadata.resourceVersion: a concurrent writer makes it fail with 409.
        match api.replace(node, &PostParams::default(), &obj).await {
            Ok(new) => {
                written.insert(node.to_string(), new);
                return Ok(true);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                ctx.ctx.metrics.allocation_conflicts.inc();
                written.remove(node);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(node.into()))
}

fn request_of(claim: &VGpuClaim) -> Result<Request> {
    let memory_bytes = parse_quantity(&claim.spec.memory.0).map_err(|e| Error::Invalid {
        what: format!("VGpuClaim {}", claim.name_any()),
        message: e.to_string(),
    })?;
    Ok(Request {
        memory_bytes,
        compute_share: claim.spec.compute_share,
        selector: claim.spec.gpu_selector.clone(),
    })
}

async fn allocate(claim: &VGpuClaim, ctx: &VGpuContext) -> Result<Option<Placed>> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let req = AllocRequest {
        uid: claim.uid().unwrap_or_default(),
        namespace: claim.namespace().unwrap_or_default(),
        name: claim.name_any(),
        req: request_of(claim)?,
        reply,
    };
    let gone = || Error::Conflict("the allocator task is gone".into());
    ctx.alloc_tx.send(req).map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

async fn consumers(claim: &VGpuClaim, ctx: &VGpuContext) -> Result<Vec<ReservedFor>> {
    let ns = claim.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.ctx.client.clone(), &ns);
    let name = claim.name_any();
    let mut out: Vec<ReservedFor> = pods
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter(|p| p.annotations().get(CLAIM_ANNOTATION) == Some(&name))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            )
        })
        .map(|p| ReservedFor {
            resource: "pods".into(),
            name: p.name_any(),
            uid: p.uid().unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.uid.cmp(&b.uid));
    Ok(out)
}

async fn apply(claim: &VGpuClaim, ctx: &VGpuContext, api: &Api<VGpuClaim>) -> Result<Action> {
    let name = claim.name_any();
    let generation = claim.metadata.generation;
    let old = claim.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.observed_generation = generation;
    if old.phase == Some(ClaimPhase::Released) {
        return Ok(Action::await_change());
    }
    let found = match find_allocation(claim, ctx).await? {
        Some(a) => Some(a),
        None => {
            let a = allocate(claim, ctx).await?;
            if let Some((node, sid, e)) = &a {
                ctx.ctx.metrics.allocations.inc();
                info!(claim = %name, node, share = sid, gpu = e.gpu_uuid, "allocated");
                crate::publish_event(
                    &ctx.ctx,
                    &claim.object_ref(&()),
                    EventType::Normal,
                    "Allocated",
                    format!(
                        "{} and {}% of GPU {} on node {node}",
                        claim.spec.memory.0, e.compute_share, e.gpu_uuid
                    ),
                )
                .await;
            }
            a
        }
    };
    let Some((node, sid, entry)) = found else {
        let req = request_of(claim)?;
        st.phase = Some(ClaimPhase::Pending);
        st.allocation = None;
        let msg = format!(
            "no GPU matching the selector has {} bytes of memory and {}% compute share free",
            req.memory_bytes, req.compute_share
        );
        conditions::set(
            &mut st.conditions,
            condition::ALLOCATED,
            false,
            "Unschedulable",
            &msg,
            generation,
        );
        if st != old {
            if old.phase != Some(ClaimPhase::Pending) {
                crate::publish_event(
                    &ctx.ctx,
                    &claim.object_ref(&()),
                    EventType::Warning,
                    "AllocationFailed",
                    msg,
                )
                .await;
            }
            write_status(api, &name, &st).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(15)));
    };

    let pods = consumers(claim, ctx).await?;
    if pods.is_empty() && !old.reserved_for.is_empty() {
        // Every pod that reserved the allocation is gone: release it.
        update_ledger(ctx, &node, |l| l.shares.remove(&sid).is_some()).await?;
        ctx.ctx.metrics.releases.inc();
        st.phase = Some(ClaimPhase::Released);
        st.allocation = None;
        st.reserved_for.clear();
        conditions::set(
            &mut st.conditions,
            condition::ALLOCATED,
            false,
            "Released",
            "every pod that reserved the allocation is gone",
            generation,
        );
        write_status(api, &name, &st).await?;
        info!(claim = %name, node, share = sid, "released");
        crate::publish_event(
            &ctx.ctx,
            &claim.object_ref(&()),
            EventType::Normal,
            "Released",
            format!("share {sid} on node {node} released"),
        )
        .await;
        return Ok(Action::await_change());
    }
    st.allocation = Some(Allocation {
        node_name: node.clone(),
        gpu_uuid: entry.gpu_uuid.clone(),
        share_id: sid.clone(),
        memory: Quantity(claim.spec.memory.0.clone()),
        compute_share: entry.compute_share,
    });
    st.phase = Some(if pods.is_empty() {
        ClaimPhase::Allocated
    } else {
        ClaimPhase::Bound
    });
    st.reserved_for = pods;
    conditions::set(
        &mut st.conditions,
        condition::ALLOCATED,
        true,
        "Allocated",
        &format!("share {sid} of GPU {} on node {node}", entry.gpu_uuid),
        generation,
    );
    if st != old {
        write_status(api, &name, &st).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn cleanup(claim: &VGpuClaim, ctx: &VGpuContext) -> Result<Action> {
    if let Some((node, sid, _)) = find_allocation(claim, ctx).await? {
        update_ledger(ctx, &node, |l| l.shares.remove(&sid).is_some()).await?;
        ctx.ctx.metrics.releases.inc();
        info!(claim = %claim.name_any(), node, share = sid, "released on deletion");
    }
    Ok(Action::await_change())
}
