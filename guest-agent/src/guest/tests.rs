//! The agent's protocol logic against the in-memory xenstore, with real processes (no chroot,
//! no mount: the "rootfs" is a temporary directory).

use std::time::Duration;

use super::agent::{Agent, AgentConfig};
use super::fake::FakeStore;
use super::protocol::{ExecResult, LogChunk, Stream, decode_b64};

const DOMID: u32 = 7;
const D: &str = "/local/domain/7";
const ALLOC: &str = r#"{"claim":"c1","namespace":"ns","node":"n1","gpuUuid":"GPU-1","memoryBytes":1073741824,"computeShare":25,"idmChannel":"xen:ring:0"}"#;
const T: Duration = Duration::from_secs(20);

struct Harness {
    store: FakeStore,
    dir: tempfile::TempDir,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.store.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spec(args: &[&str], cwd: &str) -> String {
    serde_json::json!({
        "id": "ctr", "args": args, "env": ["GREETING=hi"], "workingDir": cwd,
        "rootfsDevice": "xvda", "rootfsType": "ext4", "tty": false
    })
    .to_string()
}

/// Writes the host keys as the shim does, then starts the agent.
fn start(args: &[&str], vgpu: bool, version: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let libcuda = dir.path().join("libcuda.so.1");
    std::fs::write(&libcuda, b"\x7fELF stand-in").expect("write");
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(&root).expect("mkdir");
    let store = FakeStore::new(DOMID);
    store.host_write(&format!("{D}/tessera/version"), version);
    store.host_write(
        &format!("{D}/tessera/pod"),
        r#"{"name":"p","namespace":"ns","uid":"u1"}"#,
    );
    let cwd = root.join("run/tessera");
    store.host_write(
        &format!("{D}/tessera/container/spec"),
        &spec(args, &cwd.to_string_lossy()),
    );
    if vgpu {
        store.host_write(&format!("{D}/tessera/vgpu/allocation"), ALLOC);
    } else {
        std::fs::create_dir_all(&cwd).expect("mkdir");
    }
    let cfg = AgentConfig {
        rootfs: root,
        chroot: false,
        mount_rootfs: false,
        libcuda: Some(libcuda),
        drain_wait: Duration::from_millis(500),
        ..AgentConfig::default()
    };
    let s2 = store.clone();
    let thread = std::thread::spawn(move || {
        let mut a = Agent::new(s2, cfg).expect("agent");
        a.run().expect("run");
    });
    Harness {
        store,
        dir,
        thread: Some(thread),
    }
}

impl Harness {
    fn key(&self, rel: &str) -> String {
        format!("{D}/data/tessera/{rel}")
    }
    fn wait(&self, rel: &str, want: &str) -> String {
        let k = self.key(rel);
        self.store
            .wait_for(&k, T, |v| v == want)
            .unwrap_or_else(|| panic!("{k} never became {want:?} (is {:?})", self.store.get(&k)))
    }
    fn logs(&self) -> (Vec<u8>, Vec<u8>) {
        let mut seqs: Vec<u64> = self
            .store
            .children(&self.key("log"))
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        seqs.sort_unstable();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for s in seqs {
            let v = self
                .store
                .get(&self.key(&format!("log/{s}")))
                .expect("chunk");
            let c: LogChunk = serde_json::from_str(&v).expect("chunk json");
            let bytes = c.decode_data().expect("b64");
            match c.stream {
                Stream::Stdout => out.extend(bytes),
                Stream::Stderr => err.extend(bytes),
            }
        }
        (out, err)
    }
    fn exec(&self, n: u32, cmd: &[&str], timeout: u64) -> ExecResult {
        self.store.host_write(
            &format!("{D}/tessera/exec/{n}/request"),
            &serde_json::json!({"cmd": cmd, "timeoutSeconds": timeout}).to_string(),
        );
        let k = self.key(&format!("exec/{n}/result"));
        let v = self.store.wait_for(&k, T, |_| true).expect("exec result");
        serde_json::from_str(&v).expect("result json")
    }
}

#[test]
fn echo_hello_runs_logs_and_exits_zero_then_serves_exec_of_the_vgpu_allocation() {
    let h = start(&["/bin/echo", "hello"], true, "1");
    h.wait("agent", "ready");
    h.wait("state", "created");
    assert_eq!(
        h.store.get(&h.key("exitCode")),
        None,
        "must not run before control/start"
    );
    h.store
        .host_write(&format!("{D}/tessera/control/start"), "1");
    h.wait("state", "exited");
    assert_eq!(h.logs(), (b"hello\n".to_vec(), Vec::new()));
    assert_eq!(h.store.get(&h.key("exitCode")).as_deref(), Some("0"));
    let started: u128 = h
        .store
        .get(&h.key("startedAt"))
        .expect("startedAt")
        .parse()
        .expect("ns");
    let finished: u128 = h
        .store
        .get(&h.key("finishedAt"))
        .expect("finishedAt")
        .parse()
        .expect("ns");
    assert!(finished >= started && started > 1_600_000_000_000_000_000);
    assert!(h.store.get(&h.key("pid")).is_some());
    // vGPU provisioning and exec in the container's working directory and environment.
    let lib = h.dir.path().join("rootfs/run/tessera/lib/libcuda.so.1");
    assert_eq!(
        std::fs::read(lib).expect("libcuda copied"),
        b"\x7fELF stand-in"
    );
    let r = h.exec(0, &["cat", "vgpu.json"], 10);
    assert_eq!((r.exit_code, r.timed_out), (0, false));
    assert_eq!(decode_b64(&r.stdout).expect("b64"), ALLOC.as_bytes());
    let r = h.exec(
        1,
        &["sh", "-c", "echo $LD_LIBRARY_PATH $GREETING >&2; exit 4"],
        10,
    );
    assert_eq!(r.exit_code, 4);
    assert_eq!(
        decode_b64(&r.stderr).expect("b64"),
        b"/run/tessera/lib hi\n"
    );
}

#[test]
fn missing_binary_exits_127_with_a_reason_on_stderr() {
    let h = start(&["/no/such/binary"], false, "1");
    h.wait("agent", "ready");
    h.store
        .host_write(&format!("{D}/tessera/control/start"), "1");
    h.wait("state", "exited");
    assert_eq!(h.store.get(&h.key("exitCode")).as_deref(), Some("127"));
    let (out, err) = h.logs();
    assert!(out.is_empty());
    assert!(
        String::from_utf8_lossy(&err).contains("/no/such/binary"),
        "{err:?}"
    );
}

#[test]
fn wrong_version_is_an_error_state() {
    let h = start(&["/bin/true"], false, "2");
    h.wait("state", "error");
    let why = h.store.get(&h.key("agent")).expect("agent key");
    assert!(
        why.starts_with("error: unsupported protocol version"),
        "{why}"
    );
}

#[test]
fn term_then_kill_signals_are_delivered_each_time_they_are_written() {
    // The process ignores the first TERM; a second write of the same value delivers again and
    // KILL ends it.
    let h = start(
        &[
            "sh",
            "-c",
            "trap 'echo got-term' TERM; while :; do sleep 0.05; done",
        ],
        false,
        "1",
    );
    h.wait("agent", "ready");
    h.store
        .host_write(&format!("{D}/tessera/control/start"), "1");
    h.wait("state", "running");
    std::thread::sleep(Duration::from_millis(200));
    h.store
        .host_write(&format!("{D}/tessera/control/signal"), "TERM");
    std::thread::sleep(Duration::from_millis(300));
    h.store
        .host_write(&format!("{D}/tessera/control/signal"), "TERM");
    std::thread::sleep(Duration::from_millis(300));
    h.store
        .host_write(&format!("{D}/tessera/control/signal"), "KILL");
    h.wait("state", "exited");
    assert_eq!(h.store.get(&h.key("exitCode")).as_deref(), Some("137"));
    let (out, _) = h.logs();
    assert_eq!(
        String::from_utf8_lossy(&out).matches("got-term").count(),
        2,
        "{out:?}"
    );
}

#[test]
fn exec_timeout_and_large_output_are_reported() {
    let h = start(&["/bin/true"], false, "1");
    h.wait("agent", "ready");
    let r = h.exec(0, &["sleep", "30"], 1);
    assert!(r.timed_out);
    assert_eq!(r.exit_code, 137);
    let r = h.exec(1, &["sh", "-c", "head -c 10000 /dev/zero"], 10);
    assert_eq!((r.exit_code, r.stdout_chunks), (0, Some(8)));
    let mut all = Vec::new();
    for i in 0..8 {
        let v = h
            .store
            .get(&h.key(&format!("exec/1/stdout/{i}")))
            .expect("chunk");
        all.extend(decode_b64(&v).expect("b64"));
    }
    assert_eq!(all, vec![0u8; 10000]);
}

#[test]
fn log_back_pressure_keeps_at_most_256_unconsumed_chunks_and_loses_nothing() {
    let total = 1_500_000usize; // ~1100 chunks of 1350 bytes
    let h = start(
        &["sh", "-c", &format!("head -c {total} /dev/zero")],
        false,
        "1",
    );
    h.wait("agent", "ready");
    h.store
        .host_write(&format!("{D}/tessera/control/start"), "1");
    // Act as the host: consume (delete) chunks in order, slowly at first.
    let mut got = 0usize;
    let mut next = 0u64;
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    loop {
        let k = h.key(&format!("log/{next}"));
        if let Some(v) = h.store.get(&k) {
            let c: LogChunk = serde_json::from_str(&v).expect("json");
            got += c.decode_data().expect("b64").len();
            h.store.host_rm(&k);
            next += 1;
            continue;
        }
        if h.store.get(&h.key("state")).as_deref() == Some("exited") && h.store.get(&k).is_none() {
            break;
        }
        assert!(t0.elapsed() < T, "stalled at chunk {next}");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(got, total);
    assert_eq!(h.store.get(&h.key("exitCode")).as_deref(), Some("0"));
    assert!(
        h.store.max_log_children() <= 256,
        "{}",
        h.store.max_log_children()
    );
}
