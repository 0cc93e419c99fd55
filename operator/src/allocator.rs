//! VGpuClaim allocation: best fit over the GPUs that the TesseraNode inventories report, accounted
//! against a per-node ledger.
//!
//! The ledger is the single source of truth for what is allocated on a node's GPUs. It lives in the
//! annotation [`LEDGER_ANNOTATION`] of the node's `TesseraNode` and is written with the object's
//! `resourceVersion` (an HTTP PUT), so two concurrent allocations on one node cannot both succeed:
//! the loser gets a 409 Conflict, re-reads the ledger and tries again. Nothing is accounted from
//! in-memory guesses. The claim's `status.allocation` is written after the ledger; a claim whose
//! ledger entry exists but whose status is missing (crash in between) is adopted on the next
//! reconcile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_crds::common::GpuSelector;

/// Annotation on `TesseraNode` holding the node's allocation ledger (JSON of [`Ledger`]).
pub const LEDGER_ANNOTATION: &str = "tessera.dev/vgpu-ledger";

/// One GPU as the inventory reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuCapacity {
    pub node: String,
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_bytes: u128,
}

/// What a claim asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub memory_bytes: u128,
    pub compute_share: u8,
    pub selector: GpuSelector,
}

/// One allocation recorded in a node's ledger, keyed by share id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    pub claim_uid: String,
    pub namespace: String,
    pub name: String,
    pub gpu_uuid: String,
    pub memory_bytes: u128,
    pub compute_share: u8,
}

/// A node's ledger: share id -> allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    pub shares: BTreeMap<String, LedgerEntry>,
}

impl Ledger {
    /// The entry of a claim, by claim UID.
    pub fn find_claim(&self, claim_uid: &str) -> Option<(&String, &LedgerEntry)> {
        self.shares.iter().find(|(_, e)| e.claim_uid == claim_uid)
    }

    /// Memory and compute share in use on one GPU.
    pub fn used(&self, gpu_uuid: &str) -> (u128, u32) {
        self.shares
            .values()
            .filter(|e| e.gpu_uuid == gpu_uuid)
            .fold((0, 0), |(m, s), e| {
                (m + e.memory_bytes, s + u32::from(e.compute_share))
            })
    }
}

/// The chosen GPU and what remains on it afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub gpu: GpuCapacity,
    pub memory_left: u128,
    pub share_left: u32,
}

/// Pick the GPU that fits the request most tightly (least memory left over, then least compute
/// share left over, then node name and GPU index for a deterministic choice).
/// `ledgers` maps node name to that node's ledger.
pub fn best_fit(
    gpus: &[GpuCapacity],
    ledgers: &BTreeMap<String, Ledger>,
    req: &Request,
) -> Option<Placement> {
    best_fit_usage(gpus, &usage_of(ledgers), req)
}

/// Memory and compute share in use per GPU UUID, over all ledgers.
pub type Usage = std::collections::HashMap<String, (u128, u32)>;

/// The usage of every GPU named in `ledgers` (one pass over every entry).
pub fn usage_of(ledgers: &BTreeMap<String, Ledger>) -> Usage {
    let mut u = Usage::new();
    for e in ledgers.values().flat_map(|l| l.shares.values()) {
        let slot = u.entry(e.gpu_uuid.clone()).or_insert((0, 0));
        slot.0 += e.memory_bytes;
        slot.1 += u32::from(e.compute_share);
    }
    u
}

/// [`best_fit`] against a precomputed usage (the batch allocator keeps it up to date as it
/// places claims, instead of summing the ledgers again for every claim).
pub fn best_fit_usage(gpus: &[GpuCapacity], usage: &Usage, req: &Request) -> Option<Placement> {
    gpus.iter()
        .filter(|g| req.selector.matches(g.index, &g.uuid, &g.model))
        .filter_map(|g| {
            let (mem_used, share_used) = usage.get(&g.uuid).copied().unwrap_or((0, 0));
            let mem_free = g.memory_bytes.checked_sub(mem_used)?;
            let share_free = 100u32.checked_sub(share_used)?;
            let memory_left = mem_free.checked_sub(req.memory_bytes)?;
            let share_left = share_free.checked_sub(u32::from(req.compute_share))?;
            Some(Placement {
                gpu: g.clone(),
                memory_left,
                share_left,
            })
        })
        .min_by(|a, b| {
            (a.memory_left, a.share_left, &a.gpu.node, a.gpu.index).cmp(&(
                b.memory_left,
                b.share_left,
                &b.gpu.node,
                b.gpu.index,
            ))
        })
}

/// Share id of a claim: stable, unique per claim (derived from its UID).
pub fn share_id(claim_uid: &str) -> String {
    format!("share-{claim_uid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u128 = 1 << 30;

    fn gpu(node: &str, index: u32, mem_gi: u128, model: &str) -> GpuCapacity {
        GpuCapacity {
            node: node.into(),
            index,
            uuid: format!("GPU-{node}-{index}"),
            model: model.into(),
            memory_bytes: mem_gi * GI,
        }
    }

    fn req(mem_gi: u128, share: u8) -> Request {
        Request {
            memory_bytes: mem_gi * GI,
            compute_share: share,
            selector: GpuSelector::default(),
        }
    }

    fn entry(uid: &str, gpu: &str, mem_gi: u128, share: u8) -> LedgerEntry {
        LedgerEntry {
            claim_uid: uid.into(),
            namespace: "ns".into(),
            name: uid.into(),
            gpu_uuid: gpu.into(),
            memory_bytes: mem_gi * GI,
            compute_share: share,
        }
    }

    #[test]
    fn picks_the_tightest_gpu() {
        let gpus = [
            gpu("a", 0, 80, "H100"),
            gpu("b", 0, 141, "H200"),
            gpu("c", 0, 40, "A100"),
        ];
        let p = best_fit(&gpus, &BTreeMap::new(), &req(30, 10)).unwrap();
        assert_eq!(p.gpu.node, "c", "40 GiB leaves least over");
        assert_eq!(p.memory_left, 10 * GI);
        let p = best_fit(&gpus, &BTreeMap::new(), &req(60, 10)).unwrap();
        assert_eq!(p.gpu.node, "a");
        assert!(best_fit(&gpus, &BTreeMap::new(), &req(200, 10)).is_none());
    }

    #[test]
    fn accounts_existing_allocations_of_memory_and_share() {
        let gpus = [gpu("a", 0, 80, "H100"), gpu("a", 1, 80, "H100")];
        let mut ledgers = BTreeMap::new();
        let mut l = Ledger::default();
        l.shares.insert("s1".into(), entry("u1", "GPU-a-0", 70, 10));
        ledgers.insert("a".to_string(), l);
        // 20 GiB no longer fits on GPU 0 (10 left) -> GPU 1.
        assert_eq!(
            best_fit(&gpus, &ledgers, &req(20, 10)).unwrap().gpu.index,
            1
        );
        // 10 GiB fits exactly on GPU 0: best fit.
        assert_eq!(
            best_fit(&gpus, &ledgers, &req(10, 10)).unwrap().gpu.index,
            0
        );
        // Compute share is a budget of 100% per GPU.
        let mut l = ledgers["a"].clone();
        l.shares.insert("s2".into(), entry("u2", "GPU-a-1", 1, 95));
        ledgers.insert("a".to_string(), l);
        assert_eq!(
            best_fit(&gpus, &ledgers, &req(1, 90)).unwrap().gpu.index,
            0,
            "GPU 0 has 90% left"
        );
        assert!(
            best_fit(&gpus, &ledgers, &req(1, 91)).is_none(),
            "neither GPU has 91% left"
        );
    }

    #[test]
    fn respects_the_selector() {
        let gpus = [
            gpu("a", 0, 40, "NVIDIA A100"),
            gpu("b", 0, 80, "NVIDIA H100 80GB HBM3"),
        ];
        let mut r = req(10, 10);
        r.selector.model = Some("H100".into());
        assert_eq!(best_fit(&gpus, &BTreeMap::new(), &r).unwrap().gpu.node, "b");
        r.selector.model = Some("B200".into());
        assert!(best_fit(&gpus, &BTreeMap::new(), &r).is_none());
    }

    #[test]
    fn never_overcommits_whatever_the_order() {
        // Fill one 80 GiB GPU with random requests: the sum never exceeds capacity.
        let gpus = [gpu("a", 0, 80, "H100")];
        let mut ledgers: BTreeMap<String, Ledger> = BTreeMap::new();
        let mut seed = 7u64;
        for i in 0..200 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mem = u128::from((seed >> 33) % 20 + 1);
            let share = ((seed >> 20) % 30 + 1) as u8;
            if let Some(p) = best_fit(&gpus, &ledgers, &req(mem, share)) {
                let l = ledgers.entry("a".into()).or_default();
                l.shares.insert(
                    format!("s{i}"),
                    entry(&format!("u{i}"), &p.gpu.uuid, mem, share),
                );
            }
            let (m, s) = ledgers
                .get("a")
                .map(|l| l.used("GPU-a-0"))
                .unwrap_or((0, 0));
            assert!(m <= 80 * GI && s <= 100, "overcommitted: {m} bytes, {s}%");
        }
    }

    #[test]
    fn ledger_round_trips_as_json() {
        let mut l = Ledger::default();
        l.shares
            .insert("share-1".into(), entry("u1", "GPU-x", 16, 25));
        let j = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Ledger>(&j).unwrap(), l);
        assert_eq!(l.find_claim("u1").unwrap().0, "share-1");
        assert_eq!(share_id("0f8e1c2a-aaaa-bbbb"), "share-0f8e1c2a-aaaa-bbbb");
    }
}
