//! Apply a StoragePool on this node: plan, refuse or run, then report the agent's share of the
//! status (health, capacity, members, operation, conditions `Applied`, `Degraded`, `Progressing`,
//! and for ZFS `Exported` and `CapacityHigh`).

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use tessera_crds::StoragePool;
use tessera_crds::storage_pool::{Backend, Capacity, DeletionPolicy, MemberStatus, Operation};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::exports::ChapCredentials;
use crate::plan::{Observed, Plan, Step};
use crate::runner::Runner;
use crate::{lvm, md, zfs};

/// How to apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Start a scrub (ZFS) or parity check (MD, LVM RAID) after applying, unless one runs.
    pub scrub_now: bool,
    /// CHAP credentials of the iSCSI exports, by secret `namespace/name`.
    pub chap: Vec<(String, ChapCredentials)>,
    /// ZFS datasets (names relative to the pool) whose `snapshots` schedule fired: a snapshot of
    /// each is taken after applying and their retention enforced.
    pub snapshots_due: Vec<String>,
}

/// What the node agent reports about one pool (the fields it owns in `StoragePool.status`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    pub conditions: Vec<Condition>,
    /// The plan that was (or would have been, in a dry run) executed, and the commands that ran.
    /// Not part of the CRD status (the controller drops it).
    pub plan: Plan,
    /// Commands run after the plan (a scrub started), for the one-shot report.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_steps: Vec<Step>,
    /// The observation, for metrics. Not serialized.
    #[serde(skip)]
    pub observed: Option<Observed>,
}

impl AgentReport {
    /// The condition of type `t`, if reported.
    pub fn condition(&self, t: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == t)
    }
}

pub(crate) fn cond(
    t: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: t.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

fn section<'a, T>(s: &'a Option<T>, name: &str) -> Result<&'a T> {
    s.as_ref()
        .ok_or_else(|| Error::InvalidPool(format!("backend {name} without a {name} section")))
}

/// Plan the pool.
pub fn plan(r: &dyn Runner, pool: &StoragePool, opts: &ApplyOptions) -> Result<Plan> {
    let policy = pool.spec.device_policy;
    match pool.spec.backend {
        Backend::Md => md::plan(r, section(&pool.spec.md, "md")?, policy),
        Backend::Lvm => lvm::plan(r, section(&pool.spec.lvm, "lvm")?, policy),
        Backend::Zfs => zfs::plan(r, section(&pool.spec.zfs, "zfs")?, policy, &opts.chap),
    }
}

/// Observe the pool (after apply), `None` when it does not exist.
pub fn observe(r: &dyn Runner, pool: &StoragePool) -> Result<Option<Observed>> {
    match pool.spec.backend {
        Backend::Md => md::observe(r, section(&pool.spec.md, "md")?),
        Backend::Lvm => lvm::observe(r, section(&pool.spec.lvm, "lvm")?),
        Backend::Zfs => zfs::observe(r, section(&pool.spec.zfs, "zfs")?),
    }
}

/// Destroy the pool on this node (its resource says `deletionPolicy: Destroy`; anything else is
/// refused and nothing runs). Every step is destructive and logged with its device. Reports the
/// condition `Destroyed`: True once nothing of the pool is left (also when it was already gone),
/// False with reason `DryRun` in a dry run. A failing step is an error (the caller reports
/// `DestroyFailed` and tries again on the next pass; every step is safe to repeat).
pub fn destroy(r: &dyn Runner, pool: &StoragePool, dry_run: bool) -> Result<AgentReport> {
    let generation = pool.metadata.generation;
    let mut report = AgentReport::default();
    if pool.spec.deletion_policy != DeletionPolicy::Destroy {
        report.plan.refuse(
            "DeletionPolicyRetain",
            "the pool's deletionPolicy is Retain: the agent destroys only pools that say Destroy",
        );
        report.conditions.push(cond(
            "Destroyed",
            false,
            "DeletionPolicyRetain",
            &report.plan.refusals[0].message.clone(),
            generation,
        ));
        return Ok(report);
    }
    let plan = match pool.spec.backend {
        Backend::Md => md::destroy_plan(r, section(&pool.spec.md, "md")?)?,
        Backend::Lvm => lvm::destroy_plan(r, section(&pool.spec.lvm, "lvm")?)?,
        Backend::Zfs => zfs::destroy_plan(r, section(&pool.spec.zfs, "zfs")?)?,
    };
    for step in &plan.steps {
        run_step(r, step, dry_run)?;
    }
    let n = plan.steps.len();
    report.conditions.push(if plan.steps.is_empty() {
        cond(
            "Destroyed",
            true,
            "NotPresent",
            "the pool is not on this node (nothing to destroy)",
            generation,
        )
    } else if dry_run {
        cond(
            "Destroyed",
            false,
            "DryRun",
            &format!("would run {n} destructive step(s); dry run, nothing was changed"),
            generation,
        )
    } else {
        info!(steps = n, "pool destroyed");
        cond(
            "Destroyed",
            true,
            "Destroyed",
            &format!("destroyed in {n} step(s)"),
            generation,
        )
    });
    report.plan = plan;
    Ok(report)
}

/// The commands that start a scrub / parity check of the pool.
pub fn scrub_steps(pool: &StoragePool) -> Result<Vec<Step>> {
    Ok(match pool.spec.backend {
        Backend::Md => md::scrub_steps(section(&pool.spec.md, "md")?),
        Backend::Lvm => lvm::scrub_steps(section(&pool.spec.lvm, "lvm")?),
        Backend::Zfs => zfs::scrub_steps(section(&pool.spec.zfs, "zfs")?),
    })
}

/// Run one step, logging it first (destructive steps with their device, at warn level).
pub fn run_step(r: &dyn Runner, step: &Step, dry_run: bool) -> Result<()> {
    if step.destructive {
        warn!(device = step.device.as_deref().unwrap_or("-"), command = %step.shown(), dry_run, "destructive step: {}", step.description);
    } else {
        info!(command = %step.shown(), dry_run, "{}", step.description);
    }
    if dry_run {
        return Ok(());
    }
    let Some((program, args)) = step.command.split_first() else {
        return Ok(());
    };
    if let Some(path) = &step.wait_for {
        wait_for_device(r, path, DEVICE_WAIT)?;
    }
    if program == crate::plan::SYSFS_WRITE {
        let (Some(path), Some(value)) = (args.first(), args.get(1)) else {
            return Err(Error::InvalidPool(format!(
                "malformed step {}",
                step.shown()
            )));
        };
        return r.write(path, value);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match r.check(program, &args) {
        Err(Error::Command { status, stderr, .. }) => Err(Error::Command {
            cmd: step.shown(),
            status,
            stderr,
        }),
        other => other.map(|_| ()),
    }
}

/// How long a step waits for udev to create the device node it needs.
const DEVICE_WAIT: Duration = Duration::from_secs(30);

/// Waits until `path` exists (udev creates zvol links shortly after `zfs create -V` returns).
fn wait_for_device(r: &dyn Runner, path: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut logged = false;
    while !r.exists(path) {
        if start.elapsed() >= limit {
            return Err(Error::DeviceTimeout {
                path: path.to_string(),
                seconds: limit.as_secs(),
            });
        }
        if !logged {
            info!(path, "waiting for udev to create the device node");
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Plan and (unless `dry_run`) run, then observe. Every destructive step is logged with its device
/// before it runs.
pub fn apply(r: &dyn Runner, pool: &StoragePool, opts: &ApplyOptions) -> Result<AgentReport> {
    let generation = pool.metadata.generation;
    let plan = plan(r, pool, opts)?;
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
    } else {
        for step in &plan.steps {
            run_step(r, step, opts.dry_run)?;
        }
        let verb = if opts.dry_run {
            "would apply"
        } else {
            "applied"
        };
        let msg = if plan.steps.is_empty() {
            "no actions: the node matches the spec".to_string()
        } else {
            format!("{verb} {} step(s)", plan.steps.len())
        };
        report.conditions.push(cond(
            "Applied",
            true,
            if opts.dry_run { "DryRun" } else { "Applied" },
            &msg,
            generation,
        ));
    }
    for x in &plan.skipped {
        warn!(reason = %x.reason, "skipped: {}", x.message);
    }
    if pool.spec.backend == Backend::Zfs
        && let Some(z) = &pool.spec.zfs
        && z.exports.is_some()
    {
        report.conditions.push(match plan.skipped.first() {
            Some(x) => cond("Exported", false, &x.reason, &x.message, generation),
            None => cond(
                "Exported",
                plan.refusals.is_empty(),
                if plan.refusals.is_empty() {
                    "Exported"
                } else {
                    "PoolNotApplied"
                },
                "NFS and iSCSI exports of the spec",
                generation,
            ),
        });
    }
    if let Some(o) = observe(r, pool)? {
        if opts.scrub_now && o.operation.is_none() && plan.refusals.is_empty() {
            for step in scrub_steps(pool)? {
                run_step(r, &step, opts.dry_run)?;
                report.extra_steps.push(step);
            }
        }
        if !opts.snapshots_due.is_empty()
            && plan.refusals.is_empty()
            && let Some(z) = &pool.spec.zfs
        {
            let stamp = Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
            for step in zfs::snapshot_steps(r, z, &opts.snapshots_due, &stamp)? {
                run_step(r, &step, opts.dry_run)?;
                report.extra_steps.push(step);
            }
        }
        let o = if report.extra_steps.is_empty() || opts.dry_run {
            o
        } else {
            observe(r, pool)?.unwrap_or(o)
        };
        report.health = Some(o.health.clone());
        report.capacity = o.capacity.clone();
        report.members = o.members.clone();
        report.operation = o.operation.clone();
        report.conditions.push(cond(
            "Degraded",
            o.degraded,
            &o.degraded_reason,
            &o.degraded_message,
            generation,
        ));
        report.conditions.push(match &o.operation {
            Some(op) => cond(
                "Progressing",
                true,
                "OperationInProgress",
                &format!(
                    "{} at {}%",
                    serde_json::to_value(op.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    op.progress.as_deref().unwrap_or("?")
                ),
                generation,
            ),
            None => cond(
                "Progressing",
                false,
                "Idle",
                "no operation running",
                generation,
            ),
        });
        for (t, on, reason, msg) in &o.conditions {
            report
                .conditions
                .push(cond(t, *on, reason, msg, generation));
        }
        report.observed = Some(o);
    }
    report.plan = plan;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::ScriptedRunner;

    #[test]
    fn a_step_waits_for_its_device_and_never_runs_without_it() {
        let r = ScriptedRunner::default();
        r.ok("targetcli", "");
        r.missing("/dev/zvol/llm/vm/iscsi0");
        let step = Step::new("backstore", &["targetcli", "/backstores/block", "create"])
            .after_device("/dev/zvol/llm/vm/iscsi0");
        let err = wait_for_device(&r, "/dev/zvol/llm/vm/iscsi0", Duration::from_millis(250))
            .expect_err("the device never appears");
        assert!(
            matches!(&err, Error::DeviceTimeout { path, .. } if path == "/dev/zvol/llm/vm/iscsi0"),
            "{err}"
        );
        assert!(r.history().is_empty(), "nothing ran: {:?}", r.history());

        let present = ScriptedRunner::default();
        present.ok("targetcli", "");
        run_step(&present, &step, false).expect("device present: the step runs");
        assert_eq!(
            present.history(),
            vec!["targetcli /backstores/block create".to_string()]
        );
    }
}
