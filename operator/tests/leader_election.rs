//! Two operator replicas against a real apiserver: exactly one leads; when it dies the other takes over.

#![allow(clippy::unwrap_used)] // integration tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tessera_e2e::harness::cluster;

#[tokio::test]
async fn two_replicas_exactly_one_leader_and_failover() {
    let c = cluster().await.unwrap();
    let client = c.client().await.unwrap();
    let ns = c.namespace("tessera-system").await.unwrap();
    let mut a = Some(common::start_operator(
        &c.kubeconfig,
        &ns,
        "replica-a",
        &c.dir.join("a.log"),
    ));
    let b = common::start_operator(&c.kubeconfig, &ns, "replica-b", &c.dir.join("b.log"));
    let leader_of = |m: Option<String>| {
        m.and_then(|t| common::metric_value(&t, "tessera_operator_leader"))
            .unwrap_or(0.0)
    };

    // Settle, then sample repeatedly: never two leaders, and exactly one after settling.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..10 {
        let la = leader_of(common::metrics(a.as_ref().unwrap()));
        let lb = leader_of(common::metrics(&b));
        assert_eq!(la + lb, 1.0, "exactly one leader (a={la}, b={lb})");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let leases: Api<Lease> = Api::namespaced(client, &ns);
    let holder = leases
        .get("tessera-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert!(holder == "replica-a" || holder == "replica-b");

    // Kill the leader; the other replica takes over within about one lease duration (6 s).
    let (mut leader, survivor) = if holder == "replica-a" {
        (a.take(), b)
    } else {
        (Some(b), a.take().unwrap())
    };
    drop(leader.take());
    let t0 = Instant::now();
    loop {
        if leader_of(common::metrics(&survivor)) == 1.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} did not take over",
            survivor.identity
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let new_holder = leases
        .get("tessera-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_eq!(new_holder, survivor.identity);
    assert_ne!(new_holder, holder);
}
