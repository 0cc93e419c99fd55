//! Scale benchmark (not a test): 1,000 StoragePools and 10,000 VGpuClaims against a local control
//! plane, reconciled by a real `tessera-operator` process.
//!
//! ```sh
//! make bench-operator            # or: cargo run --release -p tessera-operator --example scale_bench -- POOLS CLAIMS
//! ```
//!
//! Prints: create→status latency p50/p99 per kind (from a watch, client side), the operator's own
//! reconcile-duration quantiles (from its histogram), and the operator's peak RSS (VmHWM).

#![allow(clippy::unwrap_used)] // a benchmark driver: a panic is the error report

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tessera_crds::{StoragePool, TesseraNode, VGpuClaim};
use tessera_e2e::control_plane::{ControlPlane, Mode};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn histogram_quantile(metrics: &str, controller: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for l in metrics.lines() {
        if l.starts_with("tessera_operator_reconcile_duration_seconds_bucket")
            && l.contains(&format!("controller=\"{controller}\""))
        {
            let le = l
                .split("le=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("+Inf");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let count: f64 = l
                .split_whitespace()
                .last()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            buckets.push((le, count));
        }
    }
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
        .unwrap_or(f64::NAN)
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pools: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let claims: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("tessera-bench-{}", std::process::id()));
    let mut cp = ControlPlane::start(&dir, Mode::Attached).await.unwrap();
    let client: Client = cp.client().await.unwrap();
    tessera_e2e::apply::install_crds(
        &client,
        &tessera_e2e::repo_root().join("charts/tessera/crds"),
    )
    .await
    .unwrap();
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in ["tessera-system", "bench"] {
        nsapi
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .unwrap();
    }
    // 100 nodes x 8 GPUs (H100 80 GiB): room for 80,000 claims of 1Gi / 1%.
    let tns: Api<TesseraNode> = Api::all(client.clone());
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for n in 0..100 {
        let name = format!("gpu-{n:03}");
        nodes
            .patch(
                &name,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
                ),
            )
            .await
            .unwrap();
        tns.patch(&name, &PatchParams::apply("bench").force(), &Patch::Apply(json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "TesseraNode", "metadata": {"name": name}, "spec": {"nodeName": name}}))).await.unwrap();
        let gpus: Vec<_> = (0..8).map(|i| json!({"index": i, "uuid": format!("GPU-{name}-{i}"), "model": "NVIDIA H100", "memory": "80Gi"})).collect();
        tns.patch_status(&name, &PatchParams::apply("bench-agent").force(), &Patch::Apply(json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "TesseraNode", "status": {"inventory": {"gpus": gpus}}}))).await.unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("tessera-operator");
    let log = std::fs::File::create(dir.join("operator.log")).unwrap();
    let mut op = Command::new(&bin)
        .args([
            format!("--kubeconfig={}", cp.kubeconfig.display()),
            "--lease-namespace=tessera-system".into(),
            format!("--listen={addr}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {}: {e} (build it: cargo build --release -p tessera-operator)",
                bin.display()
            )
        });
    while !scrape(&addr).contains("tessera_operator_leader 1") {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Watch status arrivals.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let done: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    for kind in ["sp", "vgc"] {
        let (created, done, client) = (created.clone(), done.clone(), client.clone());
        tokio::spawn(async move {
            if kind == "sp" {
                let s = watcher(Api::<StoragePool>::all(client), watcher::Config::default())
                    .applied_objects();
                s.try_for_each(|o| {
                    if o.status
                        .as_ref()
                        .is_some_and(|st| st.observed_generation.is_some())
                    {
                        let key = format!("sp/{}", o.name_any());
                        if let Some(t) = created.lock().unwrap().get(&key) {
                            done.lock()
                                .unwrap()
                                .entry(key)
                                .or_insert(t.elapsed().as_secs_f64());
                        }
                    }
                    futures::future::ready(Ok(()))
                })
                .await
                .ok();
            } else {
                let s = watcher(Api::<VGpuClaim>::all(client), watcher::Config::default())
                    .applied_objects();
                s.try_for_each(|o| {
                    if o.status.as_ref().is_some_and(|st| st.allocation.is_some()) {
                        let key = format!("vgc/{}", o.name_any());
                        if let Some(t) = created.lock().unwrap().get(&key) {
                            done.lock()
                                .unwrap()
                                .entry(key)
                                .or_insert(t.elapsed().as_secs_f64());
                        }
                    }
                    futures::future::ready(Ok(()))
                })
                .await
                .ok();
            }
        });
    }
    let t0 = Instant::now();
    let sp_api: Api<StoragePool> = Api::all(client.clone());
    let vgc_api: Api<VGpuClaim> = Api::namespaced(client.clone(), "bench");
    let items: Vec<(bool, usize)> = (0..pools)
        .map(|i| (true, i))
        .chain((0..claims).map(|i| (false, i)))
        .collect();
    futures::stream::iter(items)
        .for_each_concurrent(16, |(is_pool, i)| {
            let (sp_api, vgc_api, created) = (sp_api.clone(), vgc_api.clone(), created.clone());
            async move {
                if is_pool {
                    let name = format!("pool-{i:04}");
                    let o = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "StoragePool", "metadata": {"name": name},
                        "spec": {"nodeName": format!("gpu-{:03}", i % 100), "backend": "md",
                            "md": {"name": format!("a{i}"), "level": 6, "devices": ["/dev/disk/by-id/a", "/dev/disk/by-id/b", "/dev/disk/by-id/c", "/dev/disk/by-id/d"]}}});
                    created.lock().unwrap().insert(format!("sp/{name}"), Instant::now());
                    sp_api.create(&PostParams::default(), &serde_json::from_value(o).unwrap()).await.unwrap();
                } else {
                    let name = format!("claim-{i:05}");
                    let o = json!({"apiVersion": "tessera.dev/v1alpha1", "kind": "VGpuClaim", "metadata": {"name": name},
                        "spec": {"memory": "1Gi", "computeShare": 1}});
                    created.lock().unwrap().insert(format!("vgc/{name}"), Instant::now());
                    vgc_api.create(&PostParams::default(), &serde_json::from_value(o).unwrap()).await.unwrap();
                }
            }
        })
        .await;
    let create_secs = t0.elapsed().as_secs_f64();
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while done.lock().unwrap().len() < pools + claims && Instant::now() < deadline {
        peak = peak.max(vm_hwm_kib(op.id()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    peak = peak.max(vm_hwm_kib(op.id()));
    let all = t0.elapsed().as_secs_f64();
    let d = done.lock().unwrap().clone();
    let mut sp: Vec<f64> = d
        .iter()
        .filter(|(k, _)| k.starts_with("sp/"))
        .map(|(_, v)| *v)
        .collect();
    let mut vg: Vec<f64> = d
        .iter()
        .filter(|(k, _)| k.starts_with("vgc/"))
        .map(|(_, v)| *v)
        .collect();
    let m = scrape(&addr);
    println!(
        "objects: {pools} StoragePools, {claims} VGpuClaims; created in {create_secs:.1}s; all reconciled after {all:.1}s"
    );
    println!("| measure | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| StoragePool create->status (client, s) | {:.3} | {:.3} |",
        pct(&mut sp, 0.5),
        pct(&mut sp, 0.99)
    );
    println!(
        "| VGpuClaim create->allocated (client, s) | {:.3} | {:.3} |",
        pct(&mut vg, 0.5),
        pct(&mut vg, 0.99)
    );
    for c in ["storagepool", "vgpuclaim"] {
        println!(
            "| {c} reconcile duration (operator histogram bucket, s) | <= {} | <= {} |",
            histogram_quantile(&m, c, 0.5),
            histogram_quantile(&m, c, 0.99)
        );
    }
    let conflicts = m
        .lines()
        .find(|l| l.starts_with("tessera_operator_vgpu_ledger_conflicts_total"))
        .unwrap_or("")
        .to_string();
    println!(
        "operator peak RSS (VmHWM): {:.1} MiB; {conflicts}",
        peak as f64 / 1024.0
    );
    println!(
        "reconciled: {} of {} StoragePools, {} of {} VGpuClaims",
        sp.len(),
        pools,
        vg.len(),
        claims
    );
    let _ = op.kill();
    let _ = op.wait();
    cp.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
