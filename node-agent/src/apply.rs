//! Apply a StoragePool on this node: plan, refuse or run, then report the agent's share of the
//! status (health, members, operation, conditions `Applied`, `Degraded`, `Progressing`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use tessera_crds::StoragePool;
use tessera_crds::storage_pool::{Backend, MemberStatus, Operation};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::md;
use crate::plan::Plan;
use crate::runner::Runner;

/// What the node agent reports about one pool (the fields it owns in `StoragePool.status`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    pub conditions: Vec<Condition>,
    /// The plan that was (or would have been, in a dry run) executed. Not part of the CRD status.
    #[serde(skip)]
    pub plan: Plan,
}

fn cond(t: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    Condition {
        type_: t.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Plan the pool.
pub fn plan(r: &dyn Runner, pool: &StoragePool) -> Result<Plan> {
    match pool.spec.backend {
        Backend::Md => {
            let spec = pool
                .spec
                .md
                .as_ref()
                .ok_or_else(|| Error::InvalidPool("backend md without an md section".into()))?;
            md::plan(r, spec, pool.spec.device_policy)
        }
        Backend::Zfs => Err(Error::Unsupported("zfs".into())),
        Backend::Lvm => Err(Error::Unsupported("lvm".into())),
    }
}

/// Plan and (unless `dry_run`) run, then observe. Every destructive step is logged with its device
/// before it runs.
pub fn apply(r: &dyn Runner, pool: &StoragePool, dry_run: bool) -> Result<AgentReport> {
    let generation = pool.metadata.generation;
    let plan = plan(r, pool)?;
    let mut report = AgentReport::default();
    if !plan.refusals.is_empty() {
        let msg = plan
            .refusals
            .iter()
            .map(|x| x.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        for x in &plan.refusals {
            warn!(reason = %x.reason, "{}", x.message);
        }
        report.conditions.push(cond(
            "Applied",
            false,
            &plan.refusals[0].reason,
            &msg,
            generation,
        ));
        report.plan = plan;
        return Ok(report);
    }
    for step in &plan.steps {
        if step.destructive {
            warn!(device = step.device.as_deref().unwrap_or("-"), command = %step.command.join(" "), dry_run, "destructive step: {}", step.description);
        } else {
            info!(command = %step.command.join(" "), dry_run, "{}", step.description);
        }
        if dry_run {
            continue;
        }
        let args: Vec<&str> = step.command[1..].iter().map(String::as_str).collect();
        r.check(&step.command[0], &args)?;
    }
    let verb = if dry_run { "would apply" } else { "applied" };
    let msg = if plan.steps.is_empty() {
        "the node matches the spec".to_string()
    } else {
        format!("{verb} {} step(s)", plan.steps.len())
    };
    report.conditions.push(cond(
        "Applied",
        true,
        if dry_run { "DryRun" } else { "Applied" },
        &msg,
        generation,
    ));
    if pool.spec.backend == Backend::Md
        && let Some(spec) = &pool.spec.md
        && let Some(st) = md::state(r, &spec.name)?
    {
        let (degraded, action, progress) = md::sysfs_status(r, &st.kernel_name)?;
        report.health = Some(if degraded > 0 {
            "degraded".into()
        } else {
            "clean".into()
        });
        report.members = st
            .members
            .iter()
            .map(|(d, role)| MemberStatus {
                device: d.clone(),
                role: Some(role.clone()),
                state: Some(if role == "faulty" {
                    "faulty".into()
                } else {
                    "active".into()
                }),
                smart: None,
            })
            .collect();
        report.conditions.push(cond(
            "Degraded",
            degraded > 0,
            if degraded > 0 {
                "MembersMissing"
            } else {
                "AllMembersActive"
            },
            &format!("{degraded} member(s) missing or faulty"),
            generation,
        ));
        let op = md::operation_kind(&action);
        report.conditions.push(cond(
            "Progressing",
            op.is_some(),
            if op.is_some() {
                "SyncInProgress"
            } else {
                "Idle"
            },
            &action,
            generation,
        ));
        report.operation = op.map(|kind| Operation {
            kind,
            progress: progress.map(|p| format!("{p}")),
            eta: None,
        });
    }
    report.plan = plan;
    Ok(report)
}
