//! Leader election through a `coordination.k8s.io/v1` Lease.
//!
//! Acquire and renew are plain replaces guarded by `resourceVersion`, so when two replicas race,
//! the apiserver lets exactly one write win. A replica that cannot renew before the lease expires
//! stops acting (the caller exits), so two replicas never both act.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{debug, info};

use crate::Result;

/// Lease parameters.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Outcome of one acquire-or-renew attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    Leader,
    Follower { holder: String },
}

/// Try once to acquire or renew the lease.
pub async fn try_acquire(client: &Client, cfg: &LeaseConfig) -> Result<LeaseState> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = MicroTime(Timestamp::now());
    let secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    info!(identity = %cfg.identity, "acquired new lease");
                    Ok(LeaseState::Leader)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(LeaseState::Follower {
                    holder: "(racing)".into(),
                }),
                Err(e) => Err(e.into()),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let expired = spec.renew_time.as_ref().is_none_or(|t| {
                let dur = i64::from(spec.lease_duration_seconds.unwrap_or(secs));
                Timestamp::now().as_second() > t.0.as_second() + dur
            });
            if holder != cfg.identity && !expired && !holder.is_empty() {
                return Ok(LeaseState::Follower { holder });
            }
            if holder != cfg.identity {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(now.clone());
                spec.holder_identity = Some(cfg.identity.clone());
            }
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(secs);
            // replace() sends metadata.resourceVersion: a concurrent writer makes this fail with 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => {
                    if holder != cfg.identity {
                        info!(identity = %cfg.identity, previous = %holder, "took over lease");
                    } else {
                        debug!("renewed lease");
                    }
                    Ok(LeaseState::Leader)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(LeaseState::Follower { holder }),
                Err(e) => Err(e.into()),
            }
        }
    }
}
