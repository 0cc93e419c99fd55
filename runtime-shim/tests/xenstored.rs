//! `XsUnixStore` against a real xenstored: Debian's C xenstored 4.17 run as a plain process with
//! hack/xen/userspace-xenstored/fake-xen.c preloaded (no hypervisor needed). The same script of
//! operations runs on the in-memory `MemStore` that the runtime's unit tests use, and both must
//! answer alike: that is what makes those unit tests mean something.
//!
//! Skips with one line when xenstored (apt: xen-utils-4.17) or a C compiler is missing.
//! This binary holds a single test because it points xenstore-rs at the socket through the
//! XENSTORED_PATH environment variable (the only way xenstore-rs takes a path).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tessera_shim::xen::{MemStore, XenStore, XsUnixStore};

const XENSTORED: &str = "/usr/lib/xen-4.17/bin/xenstored";

struct Xenstored {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_xenstored(bin: &Path) -> Result<Xenstored, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/xen/userspace-xenstored/fake-xen.c");
    let so = dir.path().join("fake-xen.so");
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .map_err(|e| format!("no C compiler: {e}"))?;
    if !cc.success() {
        return Err(format!("cc {} failed", src.display()));
    }
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let log = std::fs::File::create(dir.path().join("xenstored.log")).unwrap();
    let child = Command::new(bin)
        // -N: stay in the foreground (so the child is the daemon); -F: pid file; -T: trace.
        .arg("-N")
        .arg("-F")
        .arg(dir.path().join("xenstored.pid"))
        .arg("-T")
        .arg(dir.path().join("trace.log"))
        .env("LD_PRELOAD", &so)
        .env("XENSTORED_RUNDIR", &run)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let socket = run.join("socket");
    let mut xs = Xenstored {
        child,
        _dir: dir,
        socket,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !xs.socket.exists() {
        if let Ok(Some(st)) = xs.child.try_wait() {
            panic!("xenstored exited with {st} before creating its socket");
        }
        assert!(Instant::now() < deadline, "xenstored socket never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(xs)
}

/// What a store answers to the runtime's operations, in order.
fn script(s: &dyn XenStore) -> Vec<String> {
    let d = "/local/domain/7";
    let mut out = Vec::new();
    let mut note = |what: &str, v: String| out.push(format!("{what}: {v}"));
    note(
        "read missing",
        format!("{:?}", s.read(&format!("{d}/tessera/version")).unwrap()),
    );
    note(
        "directory missing",
        format!(
            "{:?}",
            s.directory(&format!("{d}/data/tessera/log")).unwrap()
        ),
    );
    s.write(&format!("{d}/tessera/version"), "1").unwrap();
    note(
        "read back",
        format!("{:?}", s.read(&format!("{d}/tessera/version")).unwrap()),
    );
    // Log chunks as the guest writes them, out of order; the runtime sorts them numerically.
    for seq in [2, 0, 10, 1] {
        s.write(
            &format!("{d}/data/tessera/log/{seq}"),
            &format!("chunk-{seq}"),
        )
        .unwrap();
    }
    let mut seqs: Vec<u64> = s
        .directory(&format!("{d}/data/tessera/log"))
        .unwrap()
        .iter()
        .map(|x| x.parse().unwrap())
        .collect();
    seqs.sort_unstable();
    note("log seqs", format!("{seqs:?}"));
    let mut top = s.directory(&format!("{d}/data/tessera")).unwrap();
    top.sort();
    note("children", format!("{top:?}"));
    // xenstored's limit is on the request payload: path + NUL + value <= 4096 bytes. A write
    // exactly at it is accepted, one byte more is refused (the guest keeps chunks well below).
    let key = format!("{d}/data/tessera/exec/0/result");
    let big = "x".repeat(4096 - key.len() - 1);
    s.write(&key, &big).unwrap();
    note(
        "over-limit write refused",
        format!("{}", s.write(&key, &format!("{big}x")).is_err()),
    );
    note(
        "largest value",
        format!(
            "{}",
            s.read(&format!("{d}/data/tessera/exec/0/result"))
                .unwrap()
                .map(|v| v.len())
                .unwrap_or(0)
        ),
    );
    // Removing a subtree removes everything below it; removing what is gone is fine.
    s.rm(&format!("{d}/data/tessera/log/0")).unwrap();
    s.rm(&format!("{d}/data/tessera/exec/0")).unwrap();
    note(
        "after rm exec/0",
        format!(
            "{:?} {:?}",
            s.read(&format!("{d}/data/tessera/exec/0/result")).unwrap(),
            s.directory(&format!("{d}/data/tessera/exec")).unwrap()
        ),
    );
    s.rm(&format!("{d}/data/tessera/exec/0")).unwrap();
    s.rm(&format!("{d}/no/such/node")).unwrap();
    let mut left: Vec<String> = s.directory(&format!("{d}/data/tessera/log")).unwrap();
    left.sort();
    note("log left", format!("{left:?}"));
    s.rm(d).unwrap();
    note("after rm domain", format!("{:?}", s.directory(d).unwrap()));
    out
}

#[test]
fn xs_unix_store_behaves_like_xenstored_and_the_test_double() {
    let bin = std::env::var_os("TESSERA_XENSTORED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(XENSTORED));
    if !bin.exists() {
        println!(
            "skipped: no xenstored at {} (apt-get install xen-utils-4.17)",
            bin.display()
        );
        return;
    }
    let xsd = match start_xenstored(&bin) {
        Ok(x) => x,
        Err(e) if e.starts_with("no C compiler") => {
            println!("skipped: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    // SAFETY: the only test of this binary sets it before any other thread exists.
    unsafe { std::env::set_var("XENSTORED_PATH", &xsd.socket) };
    let real = XsUnixStore::open().unwrap();
    let real_answers = script(&real);
    let mem_answers = script(&MemStore::default());
    for a in &real_answers {
        println!("xenstored {a}");
    }
    assert_eq!(
        real_answers, mem_answers,
        "MemStore must answer like xenstored"
    );
    // Spot checks, so that two stores wrong in the same way still fail.
    assert_eq!(real_answers[0], "read missing: None");
    assert_eq!(real_answers[3], "log seqs: [0, 1, 2, 10]");
    assert_eq!(real_answers[5], "over-limit write refused: true");
    assert_eq!(
        real_answers[6],
        format!(
            "largest value: {}",
            4096 - "/local/domain/7/data/tessera/exec/0/result".len() - 1
        )
    );

    // Over the limit: a clear error, not a dropped connection.
    let err = real
        .write("/local/domain/7/too-big", &"y".repeat(5000))
        .unwrap_err();
    assert!(
        err.to_string().contains("/local/domain/7/too-big"),
        "error names the path: {err}"
    );
    // And the connection still works after it.
    real.write("/local/domain/7/after", "ok").unwrap();
    assert_eq!(
        real.read("/local/domain/7/after").unwrap().as_deref(),
        Some("ok")
    );

    // A second connection (the guest's side in the lane) sees the writes at once.
    let other = XsUnixStore::open().unwrap();
    assert_eq!(
        other.read("/local/domain/7/after").unwrap().as_deref(),
        Some("ok")
    );
}
