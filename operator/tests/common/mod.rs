//! Helpers for running `tessera-operator` as a real process against the local control plane.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running operator process, killed on drop.
pub struct Operator {
    pub child: Child,
    pub metrics_addr: String,
    pub identity: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start the operator binary with a kubeconfig, a lease and an identity.
pub fn start_operator(kubeconfig: &Path, lease_ns: &str, identity: &str, log: &Path) -> Operator {
    start_operator_with(kubeconfig, lease_ns, identity, log, &[])
}

/// Same, with extra flags.
pub fn start_operator_with(
    kubeconfig: &Path,
    lease_ns: &str,
    identity: &str,
    log: &Path,
    extra: &[&str],
) -> Operator {
    let port = free_port();
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera-operator"));
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--lease-namespace={lease_ns}"))
        .arg(format!("--identity={identity}"))
        .arg("--lease-seconds=8")
        .arg(format!("--listen=127.0.0.1:{port}"))
        .args(extra)
        .env("RUST_LOG", "info,kube=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: prctl in the child before exec; ties the operator's life to this test process.
    unsafe {
        cmd.pre_exec(|| {
            libc_prctl_pdeathsig();
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let op = Operator {
        child,
        metrics_addr: format!("127.0.0.1:{port}"),
        identity: identity.into(),
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if metrics(&op).is_some() {
            return op;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "operator {identity} did not serve /metrics; log: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn libc_prctl_pdeathsig() {
    // PR_SET_PDEATHSIG = 1, SIGKILL = 9
    unsafe extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    // SAFETY: plain syscall wrapper.
    unsafe {
        prctl(1, 9, 0, 0, 0);
    }
}

/// GET /metrics over plain TCP.
pub fn metrics(op: &Operator) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&op.metrics_addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.contains("200 OK").then_some(body)
}

/// The value of a metric line (first sample whose line starts with `name`).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split_whitespace().next() == Some(name) || l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}
