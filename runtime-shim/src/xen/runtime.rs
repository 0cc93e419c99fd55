//! Xen pods: one PV/PVH domain per pod, created when its (single) container is created, driven
//! through xenstore (docs/xen-guest-protocol.md). All methods block; the CRI service calls them on
//! blocking threads.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;
use tracing::{info, warn};

use super::hypervisor::{DomainSpec, DomainType, Hypervisor};
use super::store::XenStore;
use crate::command::CommandRunner;
use crate::cri;
use crate::error::{Result, ShimError};
use crate::image::{ImageStore, StoredImage, rootfs};
use crate::util::{cri_log_lines, new_id, now_ns};

/// Memory a guest needs beside its container's limit (kernel, agent, a page-cache floor), MiB.
pub const GUEST_OVERHEAD_MIB: u64 = 64;

#[derive(Debug, Clone)]
pub struct XenConfig {
    pub handler: String,
    pub state_dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub domain_type: DomainType,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub mke2fs: String,
    pub rootfs_extra_mib: u64,
    /// How long a new domain may take until its agent says `ready`.
    pub boot_timeout: Duration,
    pub poll: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CState {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone)]
struct XenSandbox {
    id: String,
    config: cri::PodSandboxConfig,
    created_at: i64,
    ready: bool,
    container: Option<String>,
}

#[derive(Debug, Clone)]
struct XenContainer {
    id: String,
    sandbox_id: String,
    config: cri::ContainerConfig,
    image: StoredImage,
    domain: String,
    domid: u32,
    dir: PathBuf,
    log_path: Option<PathBuf>,
    created_at: i64,
    started_at: i64,
    finished_at: i64,
    exit_code: i32,
    state: CState,
    reason: String,
    message: String,
    log_seq: u64,
    pending_out: Vec<u8>,
    pending_err: Vec<u8>,
    exec_seq: u64,
}

impl XenContainer {
    /// A container whose domain exists and whose process has not started.
    fn created(
        id: &str,
        sandbox_id: String,
        config: cri::ContainerConfig,
        image: StoredImage,
        (domain, domid): (String, u32),
        dir: PathBuf,
        log_path: Option<PathBuf>,
    ) -> XenContainer {
        XenContainer {
            id: id.to_string(),
            sandbox_id,
            config,
            image,
            domain,
            domid,
            dir,
            log_path,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            state: CState::Created,
            reason: String::new(),
            message: String::new(),
            log_seq: 0,
            pending_out: Vec::new(),
            pending_err: Vec::new(),
            exec_seq: 0,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    sandboxes: HashMap<String, XenSandbox>,
    containers: HashMap<String, XenContainer>,
}

/// What a container directory keeps so that a restarted shim can take its pod back: the CRI
/// configs (protobuf), the image and the ids (`saved.json` + `sandbox.pb` + `container.pb`).
struct Saved {
    sandbox_id: String,
    sandbox_config: cri::PodSandboxConfig,
    sandbox_created_at: i64,
    config: cri::ContainerConfig,
    image: StoredImage,
    log_path: Option<PathBuf>,
    created_at: i64,
}

impl Saved {
    fn save(&self, dir: &Path) -> Result<()> {
        use prost::Message as _;
        let meta = json!({
            "sandboxId": self.sandbox_id, "sandboxCreatedAt": self.sandbox_created_at,
            "image": self.image, "logPath": self.log_path, "createdAt": self.created_at,
        });
        for (name, bytes) in [
            ("sandbox.pb", self.sandbox_config.encode_to_vec()),
            ("container.pb", self.config.encode_to_vec()),
            ("saved.json", meta.to_string().into_bytes()),
        ] {
            // saved.json last: its presence means the rest is complete.
            let p = dir.join(name);
            fs::write(&p, bytes).map_err(|e| ShimError::io(&p, e))?;
        }
        Ok(())
    }

    fn load(dir: &Path) -> Result<Saved> {
        use prost::Message as _;
        let read = |name: &str| {
            let p = dir.join(name);
            fs::read(&p).map_err(|e| ShimError::io(&p, e))
        };
        let meta: serde_json::Value =
            serde_json::from_slice(&read("saved.json")?).map_err(|source| ShimError::Json {
                what: format!("{}/saved.json", dir.display()),
                source,
            })?;
        let bad = |what: &str| ShimError::InvalidArgument(format!("{}: bad {what}", dir.display()));
        let image: StoredImage =
            serde_json::from_value(meta["image"].clone()).map_err(|source| ShimError::Json {
                what: format!("{}/saved.json image", dir.display()),
                source,
            })?;
        Ok(Saved {
            sandbox_id: meta["sandboxId"]
                .as_str()
                .ok_or_else(|| bad("sandboxId"))?
                .to_string(),
            sandbox_config: cri::PodSandboxConfig::decode(read("sandbox.pb")?.as_slice())
                .map_err(|_| bad("sandbox.pb"))?,
            sandbox_created_at: meta["sandboxCreatedAt"].as_i64().unwrap_or(0),
            config: cri::ContainerConfig::decode(read("container.pb")?.as_slice())
                .map_err(|_| bad("container.pb"))?,
            image,
            log_path: meta["logPath"].as_str().map(PathBuf::from),
            created_at: meta["createdAt"].as_i64().unwrap_or(0),
        })
    }
}

pub struct XenRuntime {
    cfg: XenConfig,
    hv: Arc<dyn Hypervisor>,
    xs: Arc<dyn XenStore>,
    images: Arc<ImageStore>,
    runner: Arc<dyn CommandRunner>,
    state: Mutex<State>,
}

impl std::fmt::Debug for XenRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenRuntime")
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// The Xen domain of container `id` (xl names are short; 12 hex digits stay unique in practice).
fn domain_name(id: &str) -> String {
    format!("tessera-{}", id.get(..12).unwrap_or(id))
}

fn dom(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

fn matches_labels(labels: &HashMap<String, String>, sel: &HashMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The full id for `id` or a unique prefix of at least 3 characters (as crictl accepts).
fn resolve_id<T>(map: &HashMap<String, T>, id: &str) -> Option<String> {
    if map.contains_key(id) {
        return Some(id.to_string());
    }
    let mut m = map.keys().filter(|k| id.len() >= 3 && k.starts_with(id));
    match (m.next(), m.next()) {
        (Some(k), None) => Some(k.clone()),
        _ => None,
    }
}

fn id_matches(id: &str, wanted: &str) -> bool {
    wanted.is_empty() || id == wanted || (wanted.len() >= 3 && id.starts_with(wanted))
}

impl XenRuntime {
    pub fn new(
        cfg: XenConfig,
        hv: Arc<dyn Hypervisor>,
        xs: Arc<dyn XenStore>,
        images: Arc<ImageStore>,
        runner: Arc<dyn CommandRunner>,
    ) -> Result<Self> {
        fs::create_dir_all(cfg.state_dir.join("containers"))
            .map_err(|e| ShimError::io(&cfg.state_dir, e))?;
        let rt = XenRuntime {
            cfg,
            hv,
            xs,
            images,
            runner,
            state: Mutex::new(State::default()),
        };
        rt.recover()?;
        Ok(rt)
    }

    /// After a restart: every container directory whose domain still runs becomes a pod and
    /// container again (from the CRI configs saved at create); a directory whose domain is gone,
    /// or that a crash left half made, is removed together with its domain and disk image.
    fn recover(&self) -> Result<()> {
        let root = self.cfg.state_dir.join("containers");
        let entries = fs::read_dir(&root).map_err(|e| ShimError::io(&root, e))?;
        for entry in entries.flatten() {
            let dir = entry.path();
            let id = entry.file_name().to_string_lossy().into_owned();
            let domain = domain_name(&id);
            let saved = match Saved::load(&dir) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(container = %id, error = %e, "no usable saved state (crash during create?)");
                    None
                }
            };
            let running = self.hv.find(&domain)?;
            match (saved, running) {
                (Some(saved), Some(info)) => {
                    // Exec numbers the guest has seen (their requests stay): never reuse one.
                    let exec_seq = self
                        .xs
                        .directory(&format!("{}/tessera/exec", dom(info.domid)))?
                        .iter()
                        .filter_map(|n| n.parse::<u64>().ok())
                        .max()
                        .map_or(0, |m| m + 1);
                    let mut st = self.lock()?;
                    st.sandboxes.insert(
                        saved.sandbox_id.clone(),
                        XenSandbox {
                            id: saved.sandbox_id.clone(),
                            config: saved.sandbox_config,
                            created_at: saved.sandbox_created_at,
                            ready: true,
                            container: Some(id.clone()),
                        },
                    );
                    let mut c = XenContainer::created(
                        &id,
                        saved.sandbox_id,
                        saved.config,
                        saved.image,
                        (domain.clone(), info.domid),
                        dir.clone(),
                        saved.log_path,
                    );
                    c.created_at = saved.created_at;
                    c.exec_seq = exec_seq;
                    st.containers.insert(id.clone(), c);
                    drop(st);
                    // The guest's keys say whether it runs or exited meanwhile.
                    let _ = self.refresh(&id);
                    info!(container = %id, domain = %domain, domid = info.domid, "recovered a running xen pod");
                }
                (_, running) => {
                    if running.is_some() {
                        warn!(domain = %domain, "destroying a domain the shim has no state for");
                        self.hv.destroy(&domain)?;
                    }
                    info!(container = %id, dir = %dir.display(), "removing a leftover container directory (disk image)");
                    if let Err(e) = fs::remove_dir_all(&dir) {
                        warn!(dir = %dir.display(), error = %e, "removing leftover directory");
                    }
                }
            }
        }
        Ok(())
    }

    pub fn handler(&self) -> &str {
        &self.cfg.handler
    }

    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| ShimError::Hypervisor("xen runtime state lock poisoned".into()))
    }

    fn resolve_sandbox(&self, st: &State, id: &str) -> Option<String> {
        resolve_id(&st.sandboxes, id)
    }

    fn resolve_container(&self, st: &State, id: &str) -> Option<String> {
        resolve_id(&st.containers, id)
    }

    pub fn owns_sandbox(&self, id: &str) -> bool {
        self.lock()
            .map(|st| self.resolve_sandbox(&st, id).is_some())
            .unwrap_or(false)
    }

    pub fn owns_container(&self, id: &str) -> bool {
        self.lock()
            .map(|st| self.resolve_container(&st, id).is_some())
            .unwrap_or(false)
    }

    // ---------------------------------------------------------------- sandboxes

    pub fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String> {
        let meta = config.metadata.clone().ok_or_else(|| {
            ShimError::InvalidArgument("pod sandbox config has no metadata".into())
        })?;
        if meta.name.is_empty() {
            return Err(ShimError::InvalidArgument(
                "pod sandbox name is empty".into(),
            ));
        }
        let mut st = self.lock()?;
        if let Some(existing) = st.sandboxes.values().find(|s| {
            s.config.metadata.as_ref().is_some_and(|m| {
                m.name == meta.name && m.namespace == meta.namespace && m.attempt == meta.attempt
            })
        }) {
            return Err(ShimError::FailedPrecondition(format!(
                "pod sandbox {}/{} attempt {} already exists as {}",
                meta.namespace, meta.name, meta.attempt, existing.id
            )));
        }
        let id = new_id(&format!("{}/{}", meta.namespace, meta.name));
        info!(sandbox = %id, pod = %format!("{}/{}", meta.namespace, meta.name), "xen pod sandbox ready");
        st.sandboxes.insert(
            id.clone(),
            XenSandbox {
                id: id.clone(),
                config,
                created_at: now_ns(),
                ready: true,
                container: None,
            },
        );
        Ok(id)
    }

    /// The config RunPodSandbox got (its annotations name the pod's VGpuClaim).
    pub fn sandbox_config(&self, id: &str) -> Result<cri::PodSandboxConfig> {
        let st = self.lock()?;
        let sid = self
            .resolve_sandbox(&st, id)
            .ok_or_else(|| ShimError::not_found("pod sandbox", id))?;
        Ok(st.sandboxes[&sid].config.clone())
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let (sid, cid) = {
            let st = self.lock()?;
            let sid = self
                .resolve_sandbox(&st, id)
                .ok_or_else(|| ShimError::not_found("pod sandbox", id))?;
            let cid = st.sandboxes.get(&sid).and_then(|s| s.container.clone());
            (sid, cid)
        };
        if let Some(cid) = cid {
            self.stop_container(&cid, 0)?;
            let domain = self.lock()?.containers.get(&cid).map(|c| c.domain.clone());
            if let Some(d) = domain {
                self.hv.destroy(&d)?;
            }
        }
        if let Some(s) = self.lock()?.sandboxes.get_mut(&sid) {
            s.ready = false;
        }
        info!(sandbox = %sid, "xen pod sandbox stopped");
        Ok(())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let (sid, cid) = {
            let st = self.lock()?;
            let Some(sid) = self.resolve_sandbox(&st, id) else {
                return Ok(()); // CRI: removing what is gone is not an error
            };
            let cid = st.sandboxes.get(&sid).and_then(|s| s.container.clone());
            (sid, cid)
        };
        if let Some(cid) = cid {
            self.remove_container(&cid)?;
        }
        self.lock()?.sandboxes.remove(&sid);
        info!(sandbox = %sid, "xen pod sandbox removed");
        Ok(())
    }

    fn sandbox_status_of(&self, s: &XenSandbox) -> cri::PodSandboxStatus {
        cri::PodSandboxStatus {
            id: s.id.clone(),
            metadata: s.config.metadata.clone(),
            state: if s.ready {
                cri::PodSandboxState::SandboxReady as i32
            } else {
                cri::PodSandboxState::SandboxNotready as i32
            },
            created_at: s.created_at,
            // Xen pods have no pod network yet (README: "Xen backend limits").
            network: Some(cri::PodSandboxNetworkStatus::default()),
            linux: None,
            labels: s.config.labels.clone(),
            annotations: s.config.annotations.clone(),
            runtime_handler: self.cfg.handler.clone(),
        }
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatusResponse> {
        let st = self.lock()?;
        let sid = self
            .resolve_sandbox(&st, id)
            .ok_or_else(|| ShimError::not_found("pod sandbox", id))?;
        let s = &st.sandboxes[&sid];
        let mut info = HashMap::new();
        if let Some(c) = s.container.as_ref().and_then(|c| st.containers.get(c)) {
            info.insert(
                "info".to_string(),
                json!({"domain": c.domain, "domid": c.domid, "disk": c.dir.join("rootfs.img")})
                    .to_string(),
            );
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(self.sandbox_status_of(s)),
            info,
            containers_statuses: Vec::new(),
            timestamp: now_ns(),
        })
    }

    pub fn list_pod_sandbox(
        &self,
        filter: Option<&cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let st = self.lock()?;
        let mut out = Vec::new();
        for s in st.sandboxes.values() {
            let status = self.sandbox_status_of(s);
            if let Some(f) = filter
                && (!id_matches(&s.id, &f.id)
                    || f.state.as_ref().is_some_and(|v| v.state != status.state)
                    || !matches_labels(&s.config.labels, &f.label_selector))
            {
                continue;
            }
            out.push(cri::PodSandbox {
                id: s.id.clone(),
                metadata: s.config.metadata.clone(),
                state: status.state,
                created_at: s.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: self.cfg.handler.clone(),
            });
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- containers

    /// CRI semantics: `command` replaces the image entrypoint, `args` replace its cmd.
    fn resolve_args(config: &cri::ContainerConfig, image: &StoredImage) -> Vec<String> {
        let entry = if config.command.is_empty() {
            image.config.entrypoint.clone().unwrap_or_default()
        } else {
            config.command.clone()
        };
        let args = if !config.args.is_empty() {
            config.args.clone()
        } else if config.command.is_empty() {
            image.config.cmd.clone().unwrap_or_default()
        } else {
            Vec::new()
        };
        entry.into_iter().chain(args).collect()
    }

    pub fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        vgpu: Option<String>,
    ) -> Result<String> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| ShimError::InvalidArgument("container config has no metadata".into()))?;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ShimError::InvalidArgument("container config has no image".into()))?;
        let (sid, sandbox) = {
            let st = self.lock()?;
            let sid = self
                .resolve_sandbox(&st, sandbox_id)
                .ok_or_else(|| ShimError::not_found("pod sandbox", sandbox_id))?;
            let s = st.sandboxes[&sid].clone();
            if !s.ready {
                return Err(ShimError::FailedPrecondition(format!(
                    "pod sandbox {sid} is not ready"
                )));
            }
            if let Some(c) = &s.container {
                return Err(ShimError::FailedPrecondition(format!(
                    "pod sandbox {sid} already has container {c}: a {} pod runs one container per domain",
                    self.cfg.handler
                )));
            }
            (sid, s)
        };
        let image = self.images.find(&image_name)?.ok_or_else(|| ShimError::Image {
            reference: image_name.clone(),
            message: format!(
                "not in the shim's image store: pull it with runtime handler {} or load it with `tessera-shim image load`",
                self.cfg.handler
            ),
        })?;
        let args = Self::resolve_args(&config, &image);
        if args.is_empty() {
            return Err(ShimError::InvalidArgument(format!(
                "container {} has no command: neither the config nor image {image_name} gives one",
                meta.name
            )));
        }
        let mut env = image.config.env.clone().unwrap_or_default();
        for kv in &config.envs {
            env.retain(|e| e.split('=').next() != Some(kv.key.as_str()));
            env.push(format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)));
        }
        let working_dir = if config.working_dir.is_empty() {
            image.config.working_dir.clone().unwrap_or_default()
        } else {
            config.working_dir.clone()
        };

        let (memory_mib, vcpus) = self.domain_size(&config);
        let id = new_id(&format!("{sid}/{}", meta.name));
        let domain = domain_name(&id);
        let dir = self.cfg.state_dir.join("containers").join(&id);
        fs::create_dir_all(&dir).map_err(|e| ShimError::io(&dir, e))?;
        let disk = dir.join("rootfs.img");
        // From here on every failure removes the domain and the container directory (disk image).
        let result = (|| -> Result<u32> {
            rootfs::build_rootfs_disk(
                &self.images,
                &image,
                &dir.join("rootfs.d"),
                &disk,
                self.cfg.rootfs_extra_mib,
                &self.cfg.mke2fs,
                self.runner.as_ref(),
            )?;
            let spec = DomainSpec {
                name: domain.clone(),
                domain_type: self.cfg.domain_type,
                kernel: self.cfg.kernel.clone(),
                initramfs: self.cfg.initramfs.clone(),
                cmdline: self.cfg.cmdline.clone(),
                memory_mib,
                vcpus,
                disks: vec![disk.clone()],
            };
            let cfg_path = dir.join("domain.cfg");
            fs::write(&cfg_path, spec.to_xl_config()?).map_err(|e| ShimError::io(&cfg_path, e))?;
            let domid = self.hv.create_paused(&domain, &cfg_path)?;
            let d = dom(domid);
            let pod = sandbox.config.metadata.clone().unwrap_or_default();
            self.xs.write(&format!("{d}/tessera/version"), "1")?;
            self.xs.write(
                &format!("{d}/tessera/pod"),
                &json!({"name": pod.name, "namespace": pod.namespace, "uid": pod.uid}).to_string(),
            )?;
            self.xs.write(
                &format!("{d}/tessera/container/spec"),
                &json!({
                    "id": id, "args": args, "env": env, "workingDir": working_dir,
                    "rootfsDevice": "xvda", "rootfsType": "ext4", "tty": config.tty,
                })
                .to_string(),
            )?;
            if let Some(v) = &vgpu {
                self.xs.write(&format!("{d}/tessera/vgpu/allocation"), v)?;
            }
            self.hv.unpause(&domain)?;
            self.wait_agent_ready(&domain, domid)?;
            Ok(domid)
        })();
        let domid = match result {
            Ok(d) => d,
            Err(e) => {
                warn!(container = %id, domain = %domain, error = %e, "create failed; removing domain and disk");
                if let Err(de) = self.hv.destroy(&domain) {
                    warn!(domain = %domain, error = %de, "destroying the failed domain");
                }
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let log_path = {
            let ld = &sandbox.config.log_directory;
            (!ld.is_empty() && !config.log_path.is_empty())
                .then(|| Path::new(ld).join(&config.log_path))
        };
        let saved = Saved {
            sandbox_id: sid.clone(),
            sandbox_config: sandbox.config.clone(),
            sandbox_created_at: sandbox.created_at,
            config: config.clone(),
            image: image.clone(),
            log_path: log_path.clone(),
            created_at: now_ns(),
        };
        if let Err(e) = saved.save(&dir) {
            // Without it a restart would lose the pod: fail the create and clean up.
            warn!(container = %id, error = %e, "saving the container state failed; removing domain and disk");
            let _ = self.hv.destroy(&domain);
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        let c = XenContainer::created(
            &id,
            sid.clone(),
            config,
            image,
            (domain.clone(), domid),
            dir,
            log_path,
        );
        let mut st = self.lock()?;
        st.containers.insert(id.clone(), c);
        if let Some(s) = st.sandboxes.get_mut(&sid) {
            s.container = Some(id.clone());
        }
        info!(container = %id, domain = %domain, domid, "xen container created");
        Ok(id)
    }

    /// Domain size from the container's resources: memory limit + the guest's own share
    /// (`GUEST_OVERHEAD_MIB`: kernel, agent, page cache floor), vCPUs = ceil(quota / period); the
    /// configured defaults when the pod sets no limit.
    fn domain_size(&self, config: &cri::ContainerConfig) -> (u64, u32) {
        let res = config.linux.as_ref().and_then(|l| l.resources.as_ref());
        let memory = res
            .map(|r| r.memory_limit_in_bytes)
            .filter(|&b| b > 0)
            .map(|b| (u64::try_from(b).unwrap_or(0) >> 20) + GUEST_OVERHEAD_MIB)
            .unwrap_or(self.cfg.memory_mib);
        let vcpus = res
            .filter(|r| r.cpu_quota > 0 && r.cpu_period > 0)
            .map(|r| {
                u32::try_from((r.cpu_quota + r.cpu_period - 1) / r.cpu_period)
                    .unwrap_or(1)
                    .max(1)
            })
            .unwrap_or(self.cfg.vcpus);
        (memory, vcpus)
    }

    fn wait_agent_ready(&self, domain: &str, domid: u32) -> Result<()> {
        let key = format!("{}/data/tessera/agent", dom(domid));
        let deadline = Instant::now() + self.cfg.boot_timeout;
        loop {
            match self.xs.read(&key)? {
                Some(v) if v == "ready" => return Ok(()),
                Some(v) if v.starts_with("error") => {
                    return Err(ShimError::Guest {
                        domain: domain.into(),
                        message: v,
                    });
                }
                _ => {}
            }
            match self.hv.find(domain)? {
                None => {
                    return Err(ShimError::Guest {
                        domain: domain.into(),
                        message: "the domain died while booting (see the xen console log)".into(),
                    });
                }
                // The config preserves crashed/shut-down domains (so their keys stay readable);
                // during boot either one means the guest never came up.
                Some(info) if info.state.contains(['c', 's']) => {
                    return Err(ShimError::Guest {
                        domain: domain.into(),
                        message: format!(
                            "the domain {} while booting (xl state {}; see the xen console log)",
                            if info.state.contains('c') {
                                "crashed"
                            } else {
                                "shut down"
                            },
                            info.state
                        ),
                    });
                }
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(ShimError::Timeout {
                    what: format!("the guest agent of domain {domain} to become ready"),
                    seconds: self.cfg.boot_timeout.as_secs(),
                });
            }
            std::thread::sleep(self.cfg.poll);
        }
    }

    fn container_key(&self, id: &str) -> Result<(String, u32, String)> {
        let st = self.lock()?;
        let cid = self
            .resolve_container(&st, id)
            .ok_or_else(|| ShimError::not_found("container", id))?;
        let c = &st.containers[&cid];
        Ok((cid.clone(), c.domid, c.domain.clone()))
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let (cid, domid, domain) = self.container_key(id)?;
        {
            let st = self.lock()?;
            if st.containers[&cid].state != CState::Created {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {cid} is not in the created state"
                )));
            }
        }
        self.xs
            .write(&format!("{}/tessera/control/start", dom(domid)), "1")?;
        let deadline = Instant::now() + self.cfg.boot_timeout;
        loop {
            self.refresh(&cid)?;
            let (state, reason) = {
                let st = self.lock()?;
                let c = &st.containers[&cid];
                (c.state, c.reason.clone())
            };
            if state != CState::Created {
                if reason == "Error" {
                    return Err(ShimError::Guest {
                        domain,
                        message: self.lock()?.containers[&cid].message.clone(),
                    });
                }
                info!(container = %cid, "xen container started");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ShimError::Timeout {
                    what: format!("container {cid} to start in domain {domain}"),
                    seconds: self.cfg.boot_timeout.as_secs(),
                });
            }
            std::thread::sleep(self.cfg.poll);
        }
    }

    /// Pulls new log chunks into the CRI log file and the guest's state into ours.
    pub fn refresh(&self, id: &str) -> Result<()> {
        let (cid, domid) = {
            let st = self.lock()?;
            let Some(cid) = self.resolve_container(&st, id) else {
                return Ok(());
            };
            let c = &st.containers[&cid];
            if c.state == CState::Exited && c.finished_at != 0 && c.pending_out.is_empty() {
                return Ok(());
            }
            (cid.clone(), c.domid)
        };
        let d = dom(domid);
        let mut seqs: Vec<u64> = self
            .xs
            .directory(&format!("{d}/data/tessera/log"))?
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        seqs.sort_unstable();
        let mut chunks = Vec::new();
        for seq in seqs {
            let key = format!("{d}/data/tessera/log/{seq}");
            if let Some(v) = self.xs.read(&key)? {
                chunks.push((seq, v));
            }
        }
        let state = self.xs.read(&format!("{d}/data/tessera/state"))?;
        let agent = self.xs.read(&format!("{d}/data/tessera/agent"))?;
        let exit_code = self.xs.read(&format!("{d}/data/tessera/exitCode"))?;
        let started = self.xs.read(&format!("{d}/data/tessera/startedAt"))?;
        let finished = self.xs.read(&format!("{d}/data/tessera/finishedAt"))?;

        let mut st = self.lock()?;
        let Some(c) = st.containers.get_mut(&cid) else {
            return Ok(());
        };
        let mut out = Vec::new();
        for (seq, v) in &chunks {
            if *seq < c.log_seq {
                continue;
            }
            let parsed: serde_json::Value = serde_json::from_str(v).unwrap_or_default();
            let stream = parsed["stream"].as_str().unwrap_or("stdout");
            let t = parsed["t"].as_i64().unwrap_or_else(now_ns);
            let data = B64
                .decode(parsed["data"].as_str().unwrap_or(""))
                .unwrap_or_default();
            let pending = if stream == "stderr" {
                &mut c.pending_err
            } else {
                &mut c.pending_out
            };
            out.extend(cri_log_lines(
                t,
                if stream == "stderr" {
                    "stderr"
                } else {
                    "stdout"
                },
                pending,
                &data,
            ));
            c.log_seq = seq + 1;
        }
        if let Some(s) = started.and_then(|s| s.parse().ok()) {
            c.started_at = s;
        }
        match state.as_deref() {
            Some("running") if c.state == CState::Created => c.state = CState::Running,
            Some("exited") => {
                c.state = CState::Exited;
                c.exit_code = exit_code.and_then(|s| s.parse().ok()).unwrap_or(-1);
                c.finished_at = finished.and_then(|s| s.parse().ok()).unwrap_or_else(now_ns);
                if c.started_at == 0 {
                    c.started_at = c.finished_at;
                }
                if c.reason.is_empty() {
                    c.reason = if c.exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .into();
                }
                // The process is gone: what is left without a newline is its last line.
                for (pending, stream) in [
                    (&mut c.pending_out, "stdout"),
                    (&mut c.pending_err, "stderr"),
                ] {
                    if !pending.is_empty() {
                        pending.push(b'\n');
                        out.extend(cri_log_lines(now_ns(), stream, pending, &[]));
                    }
                }
            }
            Some("error") => {
                c.state = CState::Exited;
                c.exit_code = 128;
                c.finished_at = now_ns();
                c.reason = "Error".into();
                c.message = agent.unwrap_or_else(|| "the guest agent reported an error".into());
            }
            _ => {}
        }
        let log_path = c.log_path.clone();
        drop(st);
        if !out.is_empty()
            && let Some(p) = log_path
        {
            if let Some(parent) = p.parent() {
                let _ = fs::create_dir_all(parent);
            }
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .and_then(|mut f| f.write_all(&out))
                .map_err(|e| ShimError::io(&p, e))?;
        }
        // Consumed chunks are deleted so the guest's quota of nodes frees up.
        for (seq, _) in chunks {
            self.xs.rm(&format!("{d}/data/tessera/log/{seq}"))?;
        }
        Ok(())
    }

    /// Refreshes every live container (called by the shim's poller).
    pub fn refresh_all(&self) {
        let ids: Vec<String> = match self.lock() {
            Ok(st) => st
                .containers
                .values()
                .filter(|c| c.state != CState::Exited || c.finished_at == 0)
                .map(|c| c.id.clone())
                .collect(),
            Err(_) => return,
        };
        for id in ids {
            if let Err(e) = self.refresh(&id) {
                warn!(container = %id, error = %e, "refreshing xen container");
            }
        }
    }

    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<()> {
        let (cid, domid, domain) = self.container_key(id)?;
        self.refresh(&cid)?;
        let state = self.lock()?.containers[&cid].state;
        if state == CState::Exited {
            return Ok(());
        }
        if state == CState::Created {
            // Never started: nothing runs; the domain goes now.
            self.hv.destroy(&domain)?;
            let mut st = self.lock()?;
            if let Some(c) = st.containers.get_mut(&cid) {
                c.state = CState::Exited;
                c.finished_at = now_ns();
                c.exit_code = 0;
                c.reason = "Stopped".into();
            }
            return Ok(());
        }
        let sig = format!("{}/tessera/control/signal", dom(domid));
        let wait_exit = |secs: u64| -> Result<bool> {
            let deadline = Instant::now() + Duration::from_secs(secs);
            loop {
                self.refresh(&cid)?;
                if self.lock()?.containers[&cid].state == CState::Exited {
                    return Ok(true);
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                std::thread::sleep(self.cfg.poll);
            }
        };
        if timeout_s > 0 {
            self.xs.write(&sig, "TERM")?;
            if wait_exit(u64::try_from(timeout_s).unwrap_or(0))? {
                return Ok(());
            }
        }
        self.xs.write(&sig, "KILL")?;
        if wait_exit(5)? {
            return Ok(());
        }
        warn!(container = %cid, domain = %domain, "the guest did not report the exit after KILL; destroying the domain");
        self.hv.destroy(&domain)?;
        let mut st = self.lock()?;
        if let Some(c) = st.containers.get_mut(&cid) {
            c.state = CState::Exited;
            c.exit_code = 137;
            c.finished_at = now_ns();
            c.reason = "Killed".into();
            c.message = "domain destroyed after the stop timeout".into();
        }
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let Ok((cid, _, domain)) = self.container_key(id) else {
            return Ok(());
        };
        let _ = self.refresh(&cid);
        self.hv.destroy(&domain)?;
        let removed = {
            let mut st = self.lock()?;
            let c = st.containers.remove(&cid);
            if let Some(c) = &c
                && let Some(s) = st.sandboxes.get_mut(&c.sandbox_id)
            {
                s.container = None;
            }
            c
        };
        if let Some(c) = removed {
            info!(container = %cid, dir = %c.dir.display(), "removing the container's disk image");
            if let Err(e) = fs::remove_dir_all(&c.dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(ShimError::io(&c.dir, e));
            }
        }
        Ok(())
    }

    fn status_of(&self, c: &XenContainer) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            state: match c.state {
                CState::Created => cri::ContainerState::ContainerCreated,
                CState::Running => cri::ContainerState::ContainerRunning,
                CState::Exited => cri::ContainerState::ContainerExited,
            } as i32,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            image: c.config.image.clone(),
            image_ref: c
                .image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| c.image.id.clone()),
            image_id: c.image.id.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
            log_path: c
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatusResponse> {
        let (cid, _, _) = self.container_key(id)?;
        self.refresh(&cid)?;
        let st = self.lock()?;
        let c = &st.containers[&cid];
        let mut info = HashMap::new();
        info.insert(
            "info".into(),
            json!({"domain": c.domain, "domid": c.domid, "sandboxID": c.sandbox_id}).to_string(),
        );
        Ok(cri::ContainerStatusResponse {
            status: Some(self.status_of(c)),
            info,
        })
    }

    pub fn list_containers(
        &self,
        filter: Option<&cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>> {
        self.refresh_all();
        let st = self.lock()?;
        let mut out = Vec::new();
        for c in st.containers.values() {
            let s = self.status_of(c);
            if let Some(f) = filter
                && (!id_matches(&c.id, &f.id)
                    || !id_matches(&c.sandbox_id, &f.pod_sandbox_id)
                    || f.state.as_ref().is_some_and(|v| v.state != s.state)
                    || !matches_labels(&c.config.labels, &f.label_selector))
            {
                continue;
            }
            out.push(cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: s.metadata,
                image: s.image,
                image_ref: s.image_ref,
                image_id: s.image_id,
                state: s.state,
                created_at: c.created_at,
                labels: s.labels,
                annotations: s.annotations,
            });
        }
        Ok(out)
    }

    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout_s: i64,
    ) -> Result<cri::ExecSyncResponse> {
        if cmd.is_empty() {
            return Err(ShimError::InvalidArgument("exec needs a command".into()));
        }
        let (cid, domid, domain) = self.container_key(id)?;
        let n = {
            let mut st = self.lock()?;
            let c = st
                .containers
                .get_mut(&cid)
                .ok_or_else(|| ShimError::not_found("container", id))?;
            if c.state != CState::Running {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {cid} is not running"
                )));
            }
            c.exec_seq += 1;
            c.exec_seq - 1
        };
        // CRI: 0 means no timeout; the shim still bounds the wait so a dead guest cannot hang it.
        let secs = if timeout_s > 0 {
            u64::try_from(timeout_s).unwrap_or(600)
        } else {
            600
        };
        let d = dom(domid);
        self.xs.write(
            &format!("{d}/tessera/exec/{n}/request"),
            &json!({"cmd": cmd, "timeoutSeconds": secs}).to_string(),
        )?;
        let key = format!("{d}/data/tessera/exec/{n}/result");
        let deadline = Instant::now() + Duration::from_secs(secs + 2);
        let mut polls = 0u64;
        loop {
            if let Some(v) = self.xs.read(&key)? {
                let r: serde_json::Value =
                    serde_json::from_str(&v).map_err(|source| ShimError::Json {
                        what: format!("exec result of domain {domain}"),
                        source,
                    })?;
                let stdout = self.exec_output(&d, n, &r, "stdout", &domain);
                let stderr = self.exec_output(&d, n, &r, "stderr", &domain);
                let _ = self.xs.rm(&format!("{d}/data/tessera/exec/{n}"));
                if r["timedOut"].as_bool() == Some(true) {
                    return Err(ShimError::Timeout {
                        what: format!("exec in container {cid}"),
                        seconds: secs,
                    });
                }
                if let Some(why) = r["error"].as_str() {
                    return Err(ShimError::Guest {
                        domain,
                        message: format!(
                            "exec in container {cid} exited with {} but its output could not be transferred: {why}",
                            r["exitCode"].as_i64().unwrap_or(-1)
                        ),
                    });
                }
                if r["truncated"].as_bool() == Some(true) {
                    warn!(container = %cid, "exec output exceeded the guest's 256 KiB cap and was truncated");
                }
                return Ok(cri::ExecSyncResponse {
                    stdout: stdout?,
                    stderr: stderr?,
                    exit_code: i32::try_from(r["exitCode"].as_i64().unwrap_or(-1)).unwrap_or(-1),
                });
            }
            if Instant::now() >= deadline {
                return Err(ShimError::Timeout {
                    what: format!("exec in container {cid}"),
                    seconds: secs,
                });
            }
            // A guest whose agent failed, or a domain that is gone, will never answer.
            polls += 1;
            if self.xs.read(&format!("{d}/data/tessera/state"))?.as_deref() == Some("error")
                || (polls.is_multiple_of(20) && self.hv.find(&domain)?.is_none())
            {
                return Err(ShimError::Guest {
                    domain,
                    message: format!("the guest stopped answering exec {n} of container {cid}"),
                });
            }
            std::thread::sleep(self.cfg.poll);
        }
    }

    /// One stream of an exec result: inline base64, or (large output) `<stream>Chunks` keys
    /// `exec/<n>/<stream>/<i>` that the guest wrote before the result.
    fn exec_output(
        &self,
        d: &str,
        n: u64,
        r: &serde_json::Value,
        stream: &str,
        domain: &str,
    ) -> Result<Vec<u8>> {
        let bad = |message: String| ShimError::Guest {
            domain: domain.into(),
            message,
        };
        let decode = |what: &str, v: &str| {
            B64.decode(v)
                .map_err(|e| bad(format!("exec {stream} {what} is not base64: {e}")))
        };
        let Some(k) = r[format!("{stream}Chunks")].as_u64() else {
            return decode("inline", r[stream].as_str().unwrap_or(""));
        };
        // 256 KiB cap / 2 KiB per chunk: anything far beyond is a malformed result.
        if k > 1024 {
            return Err(bad(format!("exec result names {k} {stream} chunks")));
        }
        let mut out = Vec::new();
        for i in 0..k {
            let key = format!("{d}/data/tessera/exec/{n}/{stream}/{i}");
            let v = self
                .xs
                .read(&key)?
                .ok_or_else(|| bad(format!("exec {stream} chunk {i} of {k} is missing")))?;
            out.extend(decode(&format!("chunk {i}"), &v)?);
        }
        Ok(out)
    }

    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let (cid, _, domain) = self.container_key(id)?;
        let info = self.hv.find(&domain)?;
        let st = self.lock()?;
        let c = &st.containers[&cid];
        let t = now_ns();
        let u = |v: u64| Some(cri::UInt64Value { value: v });
        Ok(cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.id.clone(),
                metadata: c.config.metadata.clone(),
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            }),
            cpu: info.as_ref().map(|i| cri::CpuUsage {
                timestamp: t,
                usage_core_nano_seconds: u((i.cpu_seconds * 1e9) as u64),
                ..Default::default()
            }),
            memory: info.as_ref().map(|i| cri::MemoryUsage {
                timestamp: t,
                working_set_bytes: u(i.memory_mib << 20),
                ..Default::default()
            }),
            writable_layer: fs::metadata(c.dir.join("rootfs.img")).ok().map(|m| {
                cri::FilesystemUsage {
                    timestamp: t,
                    fs_id: Some(cri::FilesystemIdentifier {
                        mountpoint: c.dir.display().to_string(),
                    }),
                    used_bytes: u(std::os::unix::fs::MetadataExt::blocks(&m) * 512),
                    inodes_used: None,
                }
            }),
            ..Default::default()
        })
    }

    pub fn list_container_stats(
        &self,
        filter: Option<&cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>> {
        let ids: Vec<String> = {
            let st = self.lock()?;
            st.containers
                .values()
                .filter(|c| {
                    filter.is_none_or(|f| {
                        id_matches(&c.id, &f.id)
                            && id_matches(&c.sandbox_id, &f.pod_sandbox_id)
                            && matches_labels(&c.config.labels, &f.label_selector)
                    })
                })
                .map(|c| c.id.clone())
                .collect()
        };
        ids.iter().map(|id| self.container_stats(id)).collect()
    }

    pub fn reopen_container_log(&self, id: &str) -> Result<()> {
        // Log files are opened per write, so a rotated file is picked up by itself.
        self.container_key(id).map(|_| ())
    }
}

#[cfg(test)]
mod tests;
