//! The agent's protocol logic: read the host's keys, provision the rootfs, wait for
//! `control/start`, run the container, stream its output, report its exit, deliver signals and
//! serve exec requests, all through a [`Store`].

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use super::error::{AgentError, Result};
use super::protocol::{
    ContainerSpec, ExecRequest, Keys, LogChunk, MAX_UNCONSUMED_LOG_CHUNKS, PROTOCOL_VERSION,
    PodInfo, Stream, encode_exec_failure, encode_exec_result, exit_code_of, now_ns,
};
use super::runner::{self, ExecOutcome, Launch, LogMsg};
use super::xenbus::Store;

/// Where the vGPU files go inside the container rootfs.
pub const VGPU_DIR: &str = "run/tessera";
/// The directory prepended to `LD_LIBRARY_PATH` (as the container sees it).
pub const VGPU_LIB_DIR: &str = "/run/tessera/lib";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Mount point of the container rootfs.
    pub rootfs: PathBuf,
    /// chroot into `rootfs` for the container and execs (off only in unit tests).
    pub chroot: bool,
    /// Mount `rootfsDevice` at `rootfs` (off in unit tests).
    pub mount_rootfs: bool,
    /// How long to wait for the rootfs block device to appear.
    pub device_wait: Duration,
    /// The stand-in `libcuda.so.1` to copy into the rootfs when the pod has a vGPU.
    pub libcuda: Option<PathBuf>,
    /// Longest wait for a xenstore event before polling the process channels again.
    pub tick: Duration,
    /// After the process exits, how long to wait for its pipes to close (a daemonised
    /// grandchild may hold them) before reporting `exited`.
    pub drain_wait: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            rootfs: PathBuf::from("/rootfs"),
            chroot: true,
            mount_rootfs: true,
            device_wait: Duration::from_secs(60),
            libcuda: Some(PathBuf::from("/usr/lib/tessera/libcuda.so.1")),
            tick: Duration::from_millis(50),
            drain_wait: Duration::from_secs(2),
        }
    }
}

/// Everything read from `D/tessera/` and prepared before `control/start`.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub pod: PodInfo,
    pub spec: ContainerSpec,
    pub vgpu: Option<String>,
    /// The container's complete environment.
    pub env: Vec<(String, String)>,
}

/// Builds the container environment: the spec's, a default `PATH` when it has none, and the
/// vGPU library directory first on `LD_LIBRARY_PATH` when the pod has a vGPU.
pub fn container_env(spec: &ContainerSpec, vgpu: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for kv in &spec.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if vgpu {
        match env.iter_mut().find(|(k, _)| k == "LD_LIBRARY_PATH") {
            Some((_, v)) if !v.is_empty() => *v = format!("{VGPU_LIB_DIR}:{v}"),
            Some((_, v)) => *v = VGPU_LIB_DIR.to_string(),
            None => env.push(("LD_LIBRARY_PATH".into(), VGPU_LIB_DIR.into())),
        }
    }
    env
}

/// Reads and validates the host's keys.
pub fn read_host_keys<S: Store>(store: &mut S, keys: &Keys) -> Result<Prepared> {
    let version = store.read(&keys.host("version"))?.unwrap_or_default();
    if version.trim() != PROTOCOL_VERSION {
        return Err(AgentError::Version(version));
    }
    let pod = match store.read(&keys.host("pod"))? {
        Some(s) => serde_json::from_str(&s).map_err(|e| AgentError::Json {
            context: "pod".into(),
            source: e,
        })?,
        None => PodInfo::default(),
    };
    let spec_s = store
        .read(&keys.host("container/spec"))?
        .ok_or_else(|| AgentError::BadKey {
            key: "container/spec".into(),
            why: "missing".into(),
        })?;
    let spec = ContainerSpec::parse(&spec_s)?;
    let vgpu = store.read(&keys.host("vgpu/allocation"))?;
    if let Some(v) = &vgpu {
        let parsed: serde_json::Value = serde_json::from_str(v).map_err(|e| AgentError::Json {
            context: "vgpu/allocation".into(),
            source: e,
        })?;
        if !parsed.is_object() {
            return Err(AgentError::BadKey {
                key: "vgpu/allocation".into(),
                why: "not a JSON object".into(),
            });
        }
    }
    let env = container_env(&spec, vgpu.is_some());
    Ok(Prepared {
        pod,
        spec,
        vgpu,
        env,
    })
}

/// Writes `run/tessera/vgpu.json` and `run/tessera/lib/libcuda.so.1` into the rootfs.
pub fn provision_vgpu(rootfs: &Path, allocation: &str, libcuda: Option<&Path>) -> Result<()> {
    let dir = rootfs.join(VGPU_DIR);
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib)
        .map_err(|e| AgentError::io(format!("mkdir {}", lib.display()), e))?;
    let json = dir.join("vgpu.json");
    std::fs::write(&json, allocation)
        .map_err(|e| AgentError::io(format!("write {}", json.display()), e))?;
    if let Some(src) = libcuda {
        let dst = lib.join("libcuda.so.1");
        std::fs::copy(src, &dst).map_err(|e| {
            AgentError::io(format!("copy {} to {}", src.display(), dst.display()), e)
        })?;
    }
    Ok(())
}

/// Messages from helper threads to the agent loop.
#[derive(Debug)]
enum Event {
    Exited { status: ExitStatus, at: u128 },
    ExecDone { n: u64, outcome: ExecOutcome },
}

#[derive(Debug)]
enum Phase {
    Created,
    Running {
        pid: i32,
    },
    /// Exited, waiting for the pipes to drain.
    Draining {
        code: i32,
        at: u128,
        since: Instant,
    },
    Exited,
}

/// The agent. `run` returns only when the store closes (never, on the real device).
pub struct Agent<S: Store> {
    store: S,
    keys: Keys,
    cfg: AgentConfig,
    prepared: Option<Prepared>,
    phase: Phase,
    seq: u64,
    unconsumed: usize,
    eofs: usize,
    log_rx: Option<Receiver<LogMsg>>,
    ev_tx: Sender<Event>,
    ev_rx: Receiver<Event>,
    execs_seen: HashSet<u64>,
    pending_logs: VecDeque<LogChunk>,
}

impl<S: Store> std::fmt::Debug for Agent<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("domain", &self.keys.domain)
            .field("phase", &self.phase)
            .finish()
    }
}

/// Reads this domain's id (the `domid` key, relative to the domain's home).
pub fn own_domid<S: Store>(store: &mut S) -> Result<u32> {
    let s = store.read("domid")?.ok_or_else(|| AgentError::BadKey {
        key: "domid".into(),
        why: "missing".into(),
    })?;
    s.trim().parse().map_err(|_| AgentError::BadKey {
        key: "domid".into(),
        why: format!("{s:?} is not a number"),
    })
}

impl<S: Store> Agent<S> {
    pub fn new(mut store: S, cfg: AgentConfig) -> Result<Self> {
        let domid = own_domid(&mut store)?;
        let (ev_tx, ev_rx) = mpsc::channel();
        Ok(Agent {
            store,
            keys: Keys::new(domid),
            cfg,
            prepared: None,
            phase: Phase::Created,
            seq: 0,
            unconsumed: 0,
            eofs: 0,
            log_rx: None,
            ev_tx,
            ev_rx,
            execs_seen: HashSet::new(),
            pending_logs: VecDeque::new(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn put(&mut self, rel: &str, value: &str) -> Result<()> {
        let path = self.keys.guest(rel);
        self.store.write(&path, value)
    }

    /// Reads the keys, mounts and provisions the rootfs; reports `agent=ready`/`state=created`,
    /// or `agent=error: ...`/`state=error`.
    pub fn prepare(&mut self) -> Result<()> {
        match self.try_prepare() {
            Ok(p) => {
                tracing::info!(
                    pod = %p.pod.name, namespace = %p.pod.namespace, container = %p.spec.id,
                    args = ?p.spec.args, vgpu = p.vgpu.is_some(), "agent ready"
                );
                self.prepared = Some(p);
                self.put("state", "created")?;
                self.put("agent", "ready")?;
                Ok(())
            }
            Err(e) => {
                tracing::error!("agent cannot run the container: {e}");
                let why: String = e.to_string().chars().take(1000).collect();
                self.put("agent", &format!("error: {why}"))?;
                self.put("state", "error")?;
                Err(e)
            }
        }
    }

    fn try_prepare(&mut self) -> Result<Prepared> {
        let p = read_host_keys(&mut self.store, &self.keys)?;
        if self.cfg.mount_rootfs {
            super::sys::mount_rootfs(
                &p.spec.rootfs_device,
                &p.spec.rootfs_type,
                &self.cfg.rootfs,
                self.cfg.device_wait,
            )?;
        }
        if let Some(alloc) = &p.vgpu {
            provision_vgpu(&self.cfg.rootfs, alloc, self.cfg.libcuda.as_deref())?;
        }
        Ok(p)
    }

    /// Prepares, then serves the domain until the store closes. After a preparation error the
    /// agent stays up (the host reads `agent`/`state`) and only waits for the store to close.
    pub fn run(&mut self) -> Result<()> {
        if self.prepare().is_err() {
            loop {
                match self.store.next_event(Duration::from_secs(3600)) {
                    Err(AgentError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
            }
        }
        let control = self.keys.host("control");
        let exec = self.keys.host("exec");
        self.store.watch(&control, "control")?;
        self.store.watch(&exec, "exec")?;
        loop {
            self.pump()?;
            let ev = match self.store.next_event(self.cfg.tick) {
                Ok(ev) => ev,
                Err(AgentError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            if let Some(ev) = ev
                && let Err(e) = self.on_watch(&ev.path)
            {
                if matches!(e, AgentError::Closed) {
                    return Ok(());
                }
                tracing::warn!(path = %ev.path, "handling watch event: {e}");
            }
        }
    }

    fn on_watch(&mut self, path: &str) -> Result<()> {
        let start = self.keys.host("control/start");
        let signal = self.keys.host("control/signal");
        let exec = self.keys.host("exec");
        if path == signal {
            return self.on_signal();
        }
        if path == start || path == self.keys.host("control") {
            return self.on_start();
        }
        if path == exec || path.starts_with(&format!("{exec}/")) {
            return self.scan_exec();
        }
        Ok(())
    }

    fn on_start(&mut self) -> Result<()> {
        if !matches!(self.phase, Phase::Created) {
            return Ok(());
        }
        let v = self.store.read(&self.keys.host("control/start"))?;
        if v.as_deref().map(str::trim) != Some("1") {
            return Ok(());
        }
        self.start_container()
    }

    fn launch_for(&self, args: Vec<String>) -> Result<Launch> {
        let p = self.prepared.as_ref().ok_or_else(|| AgentError::BadKey {
            key: "container/spec".into(),
            why: "not prepared".into(),
        })?;
        Ok(Launch {
            args,
            env: p.env.clone(),
            cwd: p.spec.cwd().to_string(),
            root: self.cfg.chroot.then(|| self.cfg.rootfs.clone()),
        })
    }

    fn start_container(&mut self) -> Result<()> {
        let args = match &self.prepared {
            Some(p) => p.spec.args.clone(),
            None => return Ok(()),
        };
        let launch = self.launch_for(args)?;
        let started = now_ns();
        let spawned = launch.command().and_then(|mut c| {
            runner::reaper()
                .spawn(&mut c)
                .map_err(|e| AgentError::io("spawn", e))
        });
        let (mut child, rx) = match spawned {
            Ok(x) => x,
            Err(e) => {
                let (code, msg) = match &e {
                    AgentError::Io { source, .. } => (
                        runner::spawn_failure_code(source),
                        format!("tessera-guest-agent: exec {}: {source}\n", launch.args[0]),
                    ),
                    other => (126, format!("tessera-guest-agent: {other}\n")),
                };
                tracing::warn!(code, "container process did not start: {}", msg.trim_end());
                self.put("startedAt", &started.to_string())?;
                self.write_log(LogChunk::new(Stream::Stderr, now_ns(), msg.as_bytes()))?;
                self.finish(code, now_ns())?;
                return Ok(());
            }
        };
        let pid = child.id() as i32;
        tracing::info!(pid, "container process started");
        let (log_tx, log_rx): (SyncSender<LogMsg>, Receiver<LogMsg>) = mpsc::sync_channel(16);
        self.eofs = 0;
        match child.stdout.take() {
            Some(p) => runner::spawn_log_reader(p, Stream::Stdout, log_tx.clone()),
            None => self.eofs += 1,
        }
        match child.stderr.take() {
            Some(p) => runner::spawn_log_reader(p, Stream::Stderr, log_tx),
            None => self.eofs += 1,
        }
        self.log_rx = Some(log_rx);
        let ev_tx = self.ev_tx.clone();
        std::thread::spawn(move || {
            if let Ok(status) = rx.recv() {
                let _ = ev_tx.send(Event::Exited {
                    status,
                    at: now_ns(),
                });
            }
        });
        self.phase = Phase::Running { pid };
        self.put("pid", &pid.to_string())?;
        self.put("startedAt", &started.to_string())?;
        self.put("state", "running")?;
        Ok(())
    }

    fn finish(&mut self, code: i32, at: u128) -> Result<()> {
        self.put("exitCode", &code.to_string())?;
        self.put("finishedAt", &at.to_string())?;
        self.put("state", "exited")?;
        self.phase = Phase::Exited;
        tracing::info!(exit_code = code, "container exited");
        Ok(())
    }

    fn on_signal(&mut self) -> Result<()> {
        let v = self.store.read(&self.keys.host("control/signal"))?;
        let sig = match v.as_deref().map(str::trim) {
            Some("TERM") => libc::SIGTERM,
            Some("KILL") => libc::SIGKILL,
            Some(other) => {
                tracing::warn!("ignoring unknown control/signal {other:?}");
                return Ok(());
            }
            None => return Ok(()),
        };
        if let Phase::Running { pid } = self.phase {
            tracing::info!(pid, sig, "delivering signal");
            // SAFETY: plain syscall; pid is our child, not yet reaped (Running).
            unsafe {
                libc::kill(pid, sig);
            }
        }
        Ok(())
    }

    fn scan_exec(&mut self) -> Result<()> {
        let base = self.keys.host("exec");
        let mut ns: Vec<u64> = self
            .store
            .directory(&base)?
            .iter()
            .filter_map(|s| s.parse().ok())
            .filter(|n| !self.execs_seen.contains(n))
            .collect();
        ns.sort_unstable();
        for n in ns {
            let Some(req) = self.store.read(&format!("{base}/{n}/request"))? else {
                continue;
            };
            self.execs_seen.insert(n);
            let req = match ExecRequest::parse(&req) {
                Ok(r) => r,
                Err(e) => {
                    let outcome = ExecOutcome {
                        exit_code: 126,
                        stdout: Vec::new(),
                        stderr: format!("tessera-guest-agent: {e}\n").into_bytes(),
                        timed_out: false,
                        truncated: false,
                    };
                    self.write_exec(n, &outcome)?;
                    continue;
                }
            };
            let launch = self.launch_for(req.cmd.clone())?;
            let timeout =
                (req.timeout_seconds > 0).then(|| Duration::from_secs(req.timeout_seconds));
            let tx = self.ev_tx.clone();
            tracing::info!(n, cmd = ?req.cmd, "exec");
            std::thread::spawn(move || {
                let outcome = runner::run_exec(&launch, timeout);
                let _ = tx.send(Event::ExecDone { n, outcome });
            });
        }
        Ok(())
    }

    fn write_exec(&mut self, n: u64, o: &ExecOutcome) -> Result<()> {
        let w = encode_exec_result(o.exit_code, &o.stdout, &o.stderr, o.timed_out, o.truncated)?;
        let written = w
            .chunks
            .iter()
            .try_for_each(|(k, v)| self.put(&format!("exec/{n}/{k}"), v))
            .and_then(|()| self.put(&format!("exec/{n}/result"), &w.result));
        if let Err(e) = written {
            // A result must still arrive, or the host waits for it until its timeout.
            tracing::warn!(n, error = %e, "writing the exec output failed; reporting without it");
            let _ = self.store.rm(&self.keys.guest(&format!("exec/{n}")));
            let failure = encode_exec_failure(o.exit_code, o.timed_out, &e.to_string())?;
            self.put(&format!("exec/{n}/result"), &failure)?;
        }
        tracing::info!(
            n,
            exit_code = o.exit_code,
            timed_out = o.timed_out,
            "exec done"
        );
        Ok(())
    }

    fn write_log(&mut self, chunk: LogChunk) -> Result<()> {
        let json = chunk.to_json()?;
        let key = format!("log/{}", self.seq);
        self.put(&key, &json)?;
        self.seq += 1;
        self.unconsumed += 1;
        Ok(())
    }

    /// Moves log chunks to xenstore (within the unconsumed budget), handles process exits and
    /// finished execs.
    fn pump(&mut self) -> Result<()> {
        // Log chunks, with back-pressure: stop taking from the pipes at the budget.
        if self.unconsumed >= MAX_UNCONSUMED_LOG_CHUNKS {
            self.unconsumed = self.store.directory(&self.keys.guest("log"))?.len();
        }
        let mut logs_idle = false;
        while self.unconsumed < MAX_UNCONSUMED_LOG_CHUNKS {
            if let Some(c) = self.pending_logs.pop_front() {
                self.write_log(c)?;
                continue;
            }
            let Some(rx) = &self.log_rx else {
                logs_idle = true;
                break;
            };
            match rx.try_recv() {
                Ok(LogMsg::Data { stream, t, bytes }) => {
                    self.pending_logs
                        .push_back(LogChunk::new(stream, t, &bytes));
                }
                Ok(LogMsg::Eof(_)) => self.eofs += 1,
                Err(TryRecvError::Empty) => {
                    logs_idle = true;
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    self.log_rx = None;
                    self.eofs = 2;
                    logs_idle = true;
                    break;
                }
            }
        }
        loop {
            match self.ev_rx.try_recv() {
                Ok(Event::Exited { status, at }) => {
                    let code = exit_code_of(status);
                    tracing::info!(exit_code = code, "container process ended");
                    self.phase = Phase::Draining {
                        code,
                        at,
                        since: Instant::now(),
                    };
                }
                Ok(Event::ExecDone { n, outcome }) => self.write_exec(n, &outcome)?,
                Err(_) => break,
            }
        }
        if let Phase::Draining { code, at, since } = self.phase {
            // Everything read so far is in xenstore (none lost to back-pressure), and the pipes
            // are closed or have stayed open past drain_wait.
            let closed = self.eofs >= 2;
            if logs_idle && (closed || since.elapsed() > self.cfg.drain_wait) {
                if !closed {
                    tracing::warn!(
                        "pipes still open {:?} after exit; reporting exit",
                        self.cfg.drain_wait
                    );
                }
                self.log_rx = None;
                self.finish(code, at)?;
            }
        }
        Ok(())
    }
}
