//! A real local control plane: etcd, kube-apiserver and kube-controller-manager on 127.0.0.1.
//!
//! Processes are started either *attached* (tests: they die with the process that started them,
//! through `PR_SET_PDEATHSIG` and an explicit [`ControlPlane::stop`]) or *detached* (`make dev`: they
//! run in their own session and `tessera-e2e down` stops them by the PIDs recorded in `run/`).

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::{info, warn};

use crate::error::{Error, Result, io};
use crate::pki::Pki;
use crate::tools::tool;

/// How the processes relate to the process that starts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Children die with their parent (tests).
    Attached,
    /// Children live on in their own session until `down` (make dev).
    Detached,
}

/// Ports of one control plane.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
}

impl Ports {
    /// Free ports chosen by the kernel (bound to port 0, then released).
    pub fn pick() -> Result<Ports> {
        let mut ls = Vec::new();
        for _ in 0..4 {
            ls.push(TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?);
        }
        let p = |i: usize| -> Result<u16> {
            Ok(ls[i]
                .local_addr()
                .map_err(io("reading a bound port"))?
                .port())
        };
        Ok(Ports {
            etcd_client: p(0)?,
            etcd_peer: p(1)?,
            apiserver: p(2)?,
            controller_manager: p(3)?,
        })
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub ports: Ports,
    pub kubeconfig: PathBuf,
    children: Vec<(String, Child)>,
    pids: Vec<(String, u32)>,
}

const COMPONENTS: [&str; 3] = ["kube-controller-manager", "kube-apiserver", "etcd"];

impl ControlPlane {
    /// Start etcd, kube-apiserver and kube-controller-manager with state under `dir`, wait for
    /// `/readyz` and for the controller manager to act, and write `dir/kubeconfig`.
    pub async fn start(dir: &Path, mode: Mode) -> Result<ControlPlane> {
        let t0 = Instant::now();
        let etcd = tool("etcd")?;
        let apiserver = tool("kube-apiserver")?;
        let kcm = tool("kube-controller-manager")?;
        for sub in ["run", "logs"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io(format!("creating {}/{sub}", dir.display())))?;
        }
        // Absolute from here on: the kubeconfig names the PKI files by path.
        let dir =
            &std::fs::canonicalize(dir).map_err(io(format!("resolving {}", dir.display())))?;
        let pki = Pki::ensure(&dir.join("pki"))?;
        let ports = Ports::pick()?;
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &pki, ports.apiserver)?;
        std::fs::write(
            dir.join("run/ports.json"),
            serde_json::to_vec(&ports).unwrap_or_default(),
        )
        .map_err(io("writing ports.json"))?;
        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            ports,
            kubeconfig,
            children: Vec::new(),
            pids: Vec::new(),
        };

        let data = dir.join("run/etcd-data");
        let _ = std::fs::remove_dir_all(&data);
        let client_url = format!("http://127.0.0.1:{}", ports.etcd_client);
        let peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
        cp.spawn(
            "etcd",
            Command::new(etcd).args([
                "--name=tessera",
                &format!("--data-dir={}", data.display()),
                &format!("--listen-client-urls={client_url}"),
                &format!("--advertise-client-urls={client_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=tessera={peer_url}"),
                // A throwaway cluster: fsync buys nothing here and costs seconds per test.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]),
            mode,
        )?;

        let p = |f: PathBuf| f.display().to_string();
        cp.spawn(
            "kube-apiserver",
            Command::new(apiserver).args([
                &format!("--etcd-servers={client_url}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={}", ports.apiserver),
                &format!("--cert-dir={}", dir.join("run/certs").display()),
                &format!("--tls-cert-file={}", p(pki.apiserver_crt())),
                &format!("--tls-private-key-file={}", p(pki.apiserver_key())),
                &format!("--client-ca-file={}", p(pki.ca_crt())),
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!("--service-account-key-file={}", p(pki.sa_pub())),
                &format!("--service-account-signing-key-file={}", p(pki.sa_key())),
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                // Loopback cannot back the `kubernetes` Service endpoints; don't reconcile them.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ]),
            mode,
        )?;
        cp.wait_ready(Duration::from_secs(120)).await?;

        cp.spawn("kube-controller-manager", Command::new(kcm).args([
            &format!("--kubeconfig={}", p(cp.kubeconfig.clone())),
            &format!("--authentication-kubeconfig={}", p(cp.kubeconfig.clone())),
            &format!("--authorization-kubeconfig={}", p(cp.kubeconfig.clone())),
            "--bind-address=127.0.0.1", &format!("--secure-port={}", ports.controller_manager),
            "--leader-elect=false",
            &format!("--service-account-private-key-file={}", p(pki.sa_key())),
            &format!("--root-ca-file={}", p(pki.ca_crt())),
            &format!("--cluster-signing-cert-file={}", p(pki.ca_crt())),
            &format!("--cluster-signing-key-file={}", p(pki.ca_key())),
            // No cloud and no node IPAM on a loopback cluster.
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
            "--v=1",
        ]), mode)?;
        cp.wait_controller_manager(Duration::from_secs(90)).await?;
        info!(elapsed = ?t0.elapsed(), kubeconfig = %cp.kubeconfig.display(), "control plane ready");
        Ok(cp)
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command, mode: Mode) -> Result<()> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let out = File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(io("cloning log handle"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        match mode {
            // SAFETY: prctl and setsid are async-signal-safe and touch no memory of the parent.
            Mode::Attached => unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            },
            Mode::Detached => unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            },
        }
        let child = cmd.spawn().map_err(io(format!("starting {name}")))?;
        let pid = child.id();
        std::fs::write(
            self.dir.join("run").join(format!("{name}.pid")),
            pid.to_string(),
        )
        .map_err(io("writing pid file"))?;
        info!(name, pid, log = %log.display(), "started");
        self.pids.push((name.to_string(), pid));
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn check_alive(&mut self) -> Result<()> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Exited {
                    component: name.clone(),
                    status: status.to_string(),
                    log: tail(&self.dir.join("logs").join(format!("{name}.log")), 20),
                });
            }
        }
        Ok(())
    }

    /// A client with admin rights.
    pub async fn client(&self) -> Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        let mut last = String::from("not tried");
        while t0.elapsed() < timeout {
            self.check_alive()?;
            match self.client().await {
                Ok(c) => {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .map_err(|e| Error::Invalid(e.to_string()))?;
                    match c.request_text(req).await {
                        Ok(body) if body.trim() == "ok" => return Ok(()),
                        Ok(body) => last = body,
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Error::NotReady {
            component: "kube-apiserver".into(),
            seconds: timeout.as_secs(),
            last,
            log: tail(&self.dir.join("logs/kube-apiserver.log"), 20),
        })
    }

    /// The controller manager is working once its service-account controller has made the
    /// `default` ServiceAccount of the `default` namespace.
    async fn wait_controller_manager(&mut self, timeout: Duration) -> Result<()> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let t0 = Instant::now();
        let client = self.client().await?;
        let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(client, "default");
        let mut last = String::from("not tried");
        while t0.elapsed() < timeout {
            self.check_alive()?;
            match sas.get_opt("default").await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => last = "ServiceAccount default/default not created yet".into(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Error::NotReady {
            component: "kube-controller-manager".into(),
            seconds: timeout.as_secs(),
            last,
            log: tail(&self.dir.join("logs/kube-controller-manager.log"), 20),
        })
    }

    /// Stop every process this control plane started (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        for (name, pid) in self.pids.drain(..).rev() {
            terminate(&name, pid);
        }
        for (_, mut child) in self.children.drain(..) {
            let _ = child.wait();
        }
        for c in COMPONENTS {
            let _ = std::fs::remove_file(self.dir.join("run").join(format!("{c}.pid")));
        }
    }

    /// PIDs of the running components.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.pids.clone()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if !self.pids.is_empty() {
            self.stop();
        }
    }
}

/// Stop a detached control plane by the PIDs recorded under `dir/run`. Returns what was stopped.
pub fn stop_detached(dir: &Path) -> Vec<String> {
    let mut stopped = Vec::new();
    for name in COMPONENTS {
        let pidfile = dir.join("run").join(format!("{name}.pid"));
        let Ok(text) = std::fs::read_to_string(&pidfile) else {
            continue;
        };
        if let Ok(pid) = text.trim().parse::<u32>() {
            if is_our_process(pid, name) {
                terminate(name, pid);
                stopped.push(format!("{name} (pid {pid})"));
            } else {
                warn!(
                    name,
                    pid, "pid file is stale (process gone or not ours); not signalling it"
                );
            }
        }
        let _ = std::fs::remove_file(pidfile);
    }
    stopped
}

/// Whether `pid` is alive and runs the binary `name` (guards against signalling a recycled PID).
pub fn is_our_process(pid: u32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split('\0')
                .next()
                .is_some_and(|argv0| argv0.ends_with(name))
        })
        .unwrap_or(false)
}

pub(crate) fn terminate(name: &str, pid: u32) {
    let Ok(ipid) = i32::try_from(pid) else { return };
    // SAFETY: plain syscalls on a PID we started.
    unsafe { libc::kill(ipid, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            info!(name, pid, "stopped");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    warn!(
        name,
        pid, "did not stop on SIGTERM within 10s; sending SIGKILL"
    );
    // SAFETY: as above.
    unsafe { libc::kill(ipid, libc::SIGKILL) };
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    let start = v.len().saturating_sub(lines);
    format!("{}:\n{}", path.display(), v[start..].join("\n"))
}

fn write_kubeconfig(path: &Path, pki: &Pki, port: u16) -> Result<()> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tessera-local", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority": pki.ca_crt().display().to_string()}}],
        "users": [{"name": "tessera-admin", "user": {
            "client-certificate": pki.admin_crt().display().to_string(),
            "client-key": pki.admin_key().display().to_string()}}],
        "contexts": [{"name": "tessera-local", "context": {"cluster": "tessera-local", "user": "tessera-admin"}}],
        "current-context": "tessera-local",
    });
    let y = serde_yaml::to_string(&doc).map_err(|source| Error::Yaml {
        file: path.display().to_string(),
        source,
    })?;
    std::fs::write(path, y).map_err(io(format!("writing {}", path.display())))
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok(Client::try_from(cfg)?)
}
