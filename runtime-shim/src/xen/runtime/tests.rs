//! XenRuntime against a fake hypervisor and a fake guest agent that answers through the in-memory
//! xenstore exactly as docs/xen-guest-protocol.md says (the real agent is exercised by
//! `make e2e-xen`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::*;
use crate::command::ScriptedRunner;
use crate::image::reference::Reference;
use crate::image::store::sha256_hex;
use crate::xen::hypervisor::DomainInfo;
use crate::xen::store::MemStore;

#[derive(Default)]
struct FakeHv {
    domains: Mutex<BTreeMap<String, u32>>,
    next: Mutex<u32>,
    /// The domain dies during boot (a bad kernel): unpause removes it.
    die_on_unpause: bool,
    /// The domain crashes during boot and is preserved (on_crash = "preserve").
    crash_on_unpause: bool,
    crashed: Mutex<Vec<String>>,
    calls: Mutex<Vec<String>>,
}

impl Hypervisor for FakeHv {
    fn create_paused(&self, name: &str, config_path: &Path) -> Result<u32> {
        assert!(config_path.exists(), "xl config written before create");
        let mut n = self.next.lock().unwrap();
        *n += 1;
        self.domains.lock().unwrap().insert(name.into(), *n);
        self.calls.lock().unwrap().push(format!("create {name}"));
        Ok(*n)
    }
    fn unpause(&self, name: &str) -> Result<()> {
        self.calls.lock().unwrap().push(format!("unpause {name}"));
        if self.die_on_unpause {
            self.domains.lock().unwrap().remove(name);
        }
        if self.crash_on_unpause {
            self.crashed.lock().unwrap().push(name.into());
        }
        Ok(())
    }
    fn destroy(&self, name: &str) -> Result<()> {
        self.calls.lock().unwrap().push(format!("destroy {name}"));
        self.domains.lock().unwrap().remove(name);
        Ok(())
    }
    fn list(&self) -> Result<Vec<DomainInfo>> {
        Ok(self
            .domains
            .lock()
            .unwrap()
            .iter()
            .map(|(name, domid)| DomainInfo {
                name: name.clone(),
                domid: *domid,
                memory_mib: 256,
                vcpus: 1,
                state: if self.crashed.lock().unwrap().contains(name) {
                    "----c-".into()
                } else {
                    "r-----".into()
                },
                cpu_seconds: 1.5,
            })
            .collect())
    }
}

/// Plays the guest agent for every domain under /local/domain: ready when the spec is there,
/// running + one log chunk on control/start, chunked exec output, exit 143 on TERM.
struct FakeGuest {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

const BIG: usize = 5000;
const ALLOC: &str = r#"{"claim":"c1","memoryBytes":1024}"#;

impl FakeGuest {
    fn start(xs: Arc<MemStore>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let keys = xs.keys.lock().unwrap().clone();
                for (k, v) in &keys {
                    let Some(d) = k.strip_suffix("/tessera/container/spec") else {
                        continue;
                    };
                    let has = |p: &str| keys.contains_key(&format!("{d}/{p}"));
                    let w = |p: &str, v: &str| xs.write(&format!("{d}/{p}"), v).unwrap();
                    if !has("data/tessera/agent") {
                        assert!(v.contains("\"rootfsDevice\":\"xvda\""), "spec: {v}");
                        w("data/tessera/agent", "ready");
                        w("data/tessera/state", "created");
                    }
                    if has("tessera/control/start") && !has("data/tessera/pid") {
                        w("data/tessera/pid", "1");
                        w("data/tessera/startedAt", "1000");
                        w("data/tessera/state", "running");
                        w(
                            "data/tessera/log/0",
                            &json!({"stream":"stdout","t":1001,"data":B64.encode(b"hello\npart")})
                                .to_string(),
                        );
                    }
                    if keys
                        .get(&format!("{d}/tessera/control/signal"))
                        .map(String::as_str)
                        == Some("TERM")
                        && !has("data/tessera/exitCode")
                    {
                        w("data/tessera/exitCode", "143");
                        w("data/tessera/finishedAt", "2000");
                        w("data/tessera/state", "exited");
                    }
                    if has("tessera/exec/1/request") && !has("data/tessera/exec/1/result") {
                        w(
                            "data/tessera/exec/1/result",
                            r#"{"exitCode":0,"stdout":"","stderr":"","timedOut":false,"truncated":true,"error":"write log: ENOSPC"}"#,
                        );
                    }
                    if has("tessera/exec/0/request") && !has("data/tessera/exec/0/result") {
                        // Large stdout in 2 KiB chunks, small stderr inline.
                        let out: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
                        let chunks: Vec<&[u8]> = out.chunks(1350).collect();
                        for (i, c) in chunks.iter().enumerate() {
                            w(&format!("data/tessera/exec/0/stdout/{i}"), &B64.encode(c));
                        }
                        w(
                            "data/tessera/exec/0/result",
                            &json!({"exitCode":3,"stdout":"","stderr":B64.encode(b"warn\n"),
                                    "timedOut":false,"stdoutChunks":chunks.len()})
                            .to_string(),
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        FakeGuest {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for FakeGuest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn tar_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(3);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "bin/app", &b"#!\n"[..]).unwrap();
    b.into_inner().unwrap()
}

/// Stores a one-layer image tagged `example.com/app:1` with `Cmd ["/bin/app"]`.
fn store_image(images: &ImageStore) {
    let put = |data: &[u8]| {
        let d = format!("sha256:{}", sha256_hex(data));
        images.put_blob(&d, data).unwrap();
        d
    };
    let layer = tar_layer();
    let layer_d = put(&layer);
    let config = br#"{"config":{"Cmd":["/bin/app"],"Env":["PATH=/bin","A=image"]}}"#;
    let config_d = put(config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_d, "size": layer.len()}],
    })
    .to_string();
    let manifest_d = put(manifest.as_bytes());
    images
        .record(&Reference::parse("example.com/app:1").unwrap(), &manifest_d)
        .unwrap();
}

struct Rig {
    rt: XenRuntime,
    hv: Arc<FakeHv>,
    xs: Arc<MemStore>,
    runner: Arc<ScriptedRunner>,
    dir: tempfile::TempDir,
}

fn rig(hv: FakeHv) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let images = Arc::new(ImageStore::open(dir.path().join("images")).unwrap());
    store_image(&images);
    let hv = Arc::new(hv);
    let xs = Arc::new(MemStore::default());
    let runner = Arc::new(ScriptedRunner::default());
    let cfg = XenConfig {
        handler: "tessera-xen".into(),
        state_dir: dir.path().join("state"),
        kernel: "/boot/vmlinuz".into(),
        initramfs: "/boot/initrd".into(),
        cmdline: "console=hvc0".into(),
        domain_type: DomainType::Pv,
        memory_mib: 256,
        vcpus: 1,
        mke2fs: "/sbin/mke2fs".into(),
        rootfs_extra_mib: 8,
        boot_timeout: Duration::from_secs(5),
        poll: Duration::from_millis(5),
    };
    let rt = XenRuntime::new(cfg, hv.clone(), xs.clone(), images, runner.clone()).unwrap();
    Rig {
        rt,
        hv,
        xs,
        runner,
        dir,
    }
}

fn pod(name: &str, annotations: &[(&str, &str)]) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn container(image: &str, log_dir: &Path) -> (cri::ContainerConfig, cri::PodSandboxConfig) {
    let mut p = pod("p1", &[]);
    p.log_directory = log_dir.display().to_string();
    let c = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        args: vec!["--flag".into()],
        envs: vec![cri::KeyValue {
            key: "A".into(),
            value: "pod".into(),
        }],
        log_path: "main/0.log".into(),
        ..Default::default()
    };
    (c, p)
}

/// The xl config the runtime wrote for container `cid`.
fn domain_cfg(r: &Rig, cid: &str) -> String {
    fs::read_to_string(
        r.dir
            .path()
            .join("state/containers")
            .join(cid)
            .join("domain.cfg"),
    )
    .unwrap()
}

fn containers_left(r: &Rig) -> usize {
    fs::read_dir(r.dir.path().join("state/containers"))
        .unwrap()
        .count()
}

#[test]
fn pod_lifecycle_through_the_guest_protocol() {
    let r = rig(FakeHv::default());
    let _guest = FakeGuest::start(r.xs.clone());
    let logs = r.dir.path().join("logs");
    let (cfg, pcfg) = container("example.com/app:1", &logs);
    let sid = r.rt.run_pod_sandbox(pcfg.clone()).unwrap();
    let cid =
        r.rt.create_container(&sid, cfg, Some(ALLOC.to_string()))
            .unwrap();
    assert!(r.runner.calls()[0].starts_with("/sbin/mke2fs -q -F -t ext4"));

    // The keys the guest reads: spec with image Cmd replaced by args, env merged, allocation.
    let d = "/local/domain/1";
    let spec: serde_json::Value = serde_json::from_str(
        &r.xs
            .read(&format!("{d}/tessera/container/spec"))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        spec["args"],
        json!(["--flag"]),
        "CRI args replace the image Cmd"
    );
    assert_eq!(spec["env"], json!(["PATH=/bin", "A=pod"]));
    assert_eq!(
        r.xs.read(&format!("{d}/tessera/vgpu/allocation"))
            .unwrap()
            .as_deref(),
        Some(ALLOC)
    );
    assert_eq!(
        r.xs.read(&format!("{d}/tessera/version"))
            .unwrap()
            .as_deref(),
        Some("1")
    );

    r.rt.start_container(&cid[..6]).unwrap();
    let st = r.rt.container_status(&cid).unwrap().status.unwrap();
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);

    let ex =
        r.rt.exec_sync(&cid, &["cat".into(), "big".into()], 10)
            .unwrap();
    let want: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    assert_eq!(ex.stdout, want, "chunked exec stdout reassembled in order");
    assert_eq!(ex.stderr, b"warn\n");
    assert_eq!(ex.exit_code, 3);
    assert!(
        r.xs.directory(&format!("{d}/data/tessera/exec"))
            .unwrap()
            .is_empty(),
        "exec keys are removed after reading"
    );

    // The guest could not write the output: a clear error, not a wait until the timeout.
    let err = r.rt.exec_sync(&cid, &["x".into()], 10).unwrap_err();
    assert!(
        err.to_string()
            .contains("could not be transferred: write log: ENOSPC"),
        "{err}"
    );

    r.rt.stop_container(&cid, 5).unwrap();
    let st = r.rt.container_status(&cid).unwrap().status.unwrap();
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 143);
    let log = fs::read_to_string(logs.join("main/0.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "log: {log}");
    assert!(lines[0].ends_with(" stdout F hello"), "{}", lines[0]);
    assert!(
        lines[1].ends_with(" stdout F part"),
        "unterminated tail flushed at exit: {}",
        lines[1]
    );
    assert!(
        r.xs.directory(&format!("{d}/data/tessera/log"))
            .unwrap()
            .is_empty(),
        "consumed log chunks are deleted"
    );

    let stats = r.rt.container_stats(&cid).unwrap();
    assert_eq!(
        stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value,
        1_500_000_000
    );

    r.rt.stop_pod_sandbox(&sid).unwrap();
    r.rt.remove_pod_sandbox(&sid).unwrap();
    assert!(r.hv.domains.lock().unwrap().is_empty(), "no domain left");
    assert_eq!(containers_left(&r), 0, "disk image directory removed");
    assert!(r.rt.list_pod_sandbox(None).unwrap().is_empty());
    // Idempotent removal.
    r.rt.remove_pod_sandbox(&sid).unwrap();
    r.rt.remove_container(&cid).unwrap();
}

#[test]
fn the_domain_is_sized_from_the_container_resources() {
    let r = rig(FakeHv::default());
    let _guest = FakeGuest::start(r.xs.clone());
    let (mut cfg, pcfg) = container("example.com/app:1", r.dir.path());
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 512 << 20,
            cpu_period: 100_000,
            cpu_quota: 150_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let sid = r.rt.run_pod_sandbox(pcfg).unwrap();
    let cid = r.rt.create_container(&sid, cfg, None).unwrap();
    let xl = domain_cfg(&r, &cid);
    assert!(
        xl.contains(&format!("memory = {}\n", 512 + GUEST_OVERHEAD_MIB)),
        "{xl}"
    );
    assert!(xl.contains("vcpus = 2\n"), "{xl}");
    // Without limits: the configured defaults.
    let (cfg, pcfg) = container("example.com/app:1", r.dir.path());
    let mut pcfg = pcfg;
    pcfg.metadata.as_mut().unwrap().name = "p2".into();
    let sid = r.rt.run_pod_sandbox(pcfg).unwrap();
    let cid = r.rt.create_container(&sid, cfg, None).unwrap();
    let xl = domain_cfg(&r, &cid);
    assert!(
        xl.contains("memory = 256\n") && xl.contains("vcpus = 1\n"),
        "{xl}"
    );
}

#[test]
fn a_restarted_shim_takes_running_pods_back_and_cleans_up_leftovers() {
    let r = rig(FakeHv::default());
    let _guest = FakeGuest::start(r.xs.clone());
    let logs = r.dir.path().join("logs");
    let (cfg, pcfg) = container("example.com/app:1", &logs);
    let sid = r.rt.run_pod_sandbox(pcfg.clone()).unwrap();
    let cid = r.rt.create_container(&sid, cfg, None).unwrap();
    r.rt.start_container(&cid).unwrap();
    let ex = r.rt.exec_sync(&cid, &["x".into()], 10).unwrap();
    assert_eq!(ex.exit_code, 3);
    // A half-made container (crash before its state was saved) and one whose domain is gone.
    let root = r.dir.path().join("state/containers");
    fs::create_dir_all(root.join("aaaaaaaaaaaaaaaa")).unwrap();
    fs::write(root.join("aaaaaaaaaaaaaaaa/rootfs.img"), b"disk").unwrap();
    r.hv.domains
        .lock()
        .unwrap()
        .insert("tessera-aaaaaaaaaaaa".into(), 77);
    fs::create_dir_all(root.join("bbbbbbbbbbbbbbbb")).unwrap();

    // The "restart": a new runtime over the same state directory, hypervisor and xenstore.
    let images = Arc::new(ImageStore::open(r.dir.path().join("images")).unwrap());
    let cfg2 = r.rt.cfg.clone();
    let rt2 = XenRuntime::new(cfg2, r.hv.clone(), r.xs.clone(), images, r.runner.clone()).unwrap();
    let pods = rt2.list_pod_sandbox(None).unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, sid);
    assert_eq!(pods[0].metadata.as_ref().unwrap().name, "p1");
    let st = rt2.container_status(&cid).unwrap().status.unwrap();
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(st.metadata.unwrap().name, "main");
    assert!(st.log_path.ends_with("main/0.log"), "{}", st.log_path);
    // Exec numbering continues after the one the guest has seen (exec/1 answers with an error
    // in the fake guest, which proves that exec/0 was not reused).
    let e = rt2.exec_sync(&cid, &["x".into()], 10).unwrap_err();
    assert!(e.to_string().contains("could not be transferred"), "{e}");
    // It still answers: stop through the guest protocol.
    rt2.stop_container(&cid, 5).unwrap();
    assert_eq!(
        rt2.container_status(&cid)
            .unwrap()
            .status
            .unwrap()
            .exit_code,
        143
    );
    // The leftovers are gone, domain included.
    assert!(!root.join("aaaaaaaaaaaaaaaa").exists());
    assert!(!root.join("bbbbbbbbbbbbbbbb").exists());
    assert!(
        !r.hv
            .domains
            .lock()
            .unwrap()
            .contains_key("tessera-aaaaaaaaaaaa")
    );
    rt2.remove_pod_sandbox(&sid).unwrap();
    assert_eq!(containers_left(&r), 0);
}

#[test]
fn a_domain_that_dies_while_booting_leaves_nothing_behind() {
    let r = rig(FakeHv {
        die_on_unpause: true,
        ..Default::default()
    });
    let (cfg, pcfg) = container("example.com/app:1", r.dir.path());
    let sid = r.rt.run_pod_sandbox(pcfg.clone()).unwrap();
    let err = r.rt.create_container(&sid, cfg, None).unwrap_err();
    assert!(
        matches!(&err, ShimError::Guest { message, .. } if message.contains("died while booting")),
        "{err}"
    );
    assert!(r.hv.domains.lock().unwrap().is_empty());
    assert!(
        r.hv.calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("destroy "))
    );
    assert_eq!(containers_left(&r), 0);
    // The sandbox stays usable for a retry.
    assert!(r.rt.list_containers(None).unwrap().is_empty());
}

#[test]
fn a_domain_that_crashes_while_booting_is_destroyed() {
    let r = rig(FakeHv {
        crash_on_unpause: true,
        ..Default::default()
    });
    let (cfg, pcfg) = container("example.com/app:1", r.dir.path());
    let sid = r.rt.run_pod_sandbox(pcfg.clone()).unwrap();
    let t = Instant::now();
    let err = r.rt.create_container(&sid, cfg, None).unwrap_err();
    assert!(err.to_string().contains("crashed while booting"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(4), "not the boot timeout");
    assert!(r.hv.domains.lock().unwrap().is_empty());
    assert_eq!(containers_left(&r), 0);
}

#[test]
fn a_missing_image_is_a_clear_error_before_any_domain() {
    let r = rig(FakeHv::default());
    let (cfg, pcfg) = container("example.com/absent:2", r.dir.path());
    let sid = r.rt.run_pod_sandbox(pcfg.clone()).unwrap();
    let err = r.rt.create_container(&sid, cfg, None).unwrap_err();
    assert!(err.to_string().contains("example.com/absent:2"), "{err}");
    assert!(err.to_string().contains("image load"), "{err}");
    assert!(r.hv.calls.lock().unwrap().is_empty());
    assert_eq!(containers_left(&r), 0);
}

#[test]
fn a_failing_mke2fs_removes_the_disk_and_creates_no_domain() {
    let r = rig(FakeHv::default());
    r.runner
        .answer("/sbin/mke2fs", 1, "", "mke2fs: No space left on device");
    let (cfg, pcfg) = container("example.com/app:1", r.dir.path());
    let sid = r.rt.run_pod_sandbox(pcfg.clone()).unwrap();
    let err = r.rt.create_container(&sid, cfg, None).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    assert!(r.hv.domains.lock().unwrap().is_empty());
    assert_eq!(containers_left(&r), 0);
}
