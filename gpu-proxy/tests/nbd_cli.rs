//! `tessera-gpu-proxy nbd` as a process: config file, real client, SIGTERM shutdown, bad input.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera-gpu-proxy"))
}

fn wait_for_socket(p: &Path, child: &mut Child) {
    let start = Instant::now();
    while !p.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("server exited early: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "socket {} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill");
}

#[test]
fn config_file_serve_and_sigterm_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("vram.sock");
    let cfg = dir.path().join("nbd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "socket: {}\nsize: 32M\nbackend: host\nexport: scratch\n",
            sock.display()
        ),
    )
    .expect("config");
    let mut child = bin()
        .arg("nbd")
        .arg("--config")
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_socket(&sock, &mut child);

    let target = tessera_nbd::client::Target::Unix(sock.clone());
    let mut c = tessera_nbd::client::Client::connect(&target, "scratch", true).expect("connect");
    assert_eq!(c.size, 32 << 20);
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.write_at(1 << 20, &data).expect("write"), 0);
    let mut back = vec![0u8; data.len()];
    assert_eq!(c.read_at(1 << 20, &mut back).expect("read"), 0);
    assert_eq!(back, data);

    let qemu_img = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-img").is_file()))
        .unwrap_or(false);
    if qemu_img {
        let uri = format!("nbd+unix:///scratch?socket={}", sock.display());
        let out = Command::new("qemu-img")
            .args(["info", "--output=json", &uri])
            .output()
            .expect("qemu-img");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("33554432"));
    } else {
        println!("skipped: qemu-img not found (the rest of this test ran)");
    }

    // SIGTERM with a client still connected: clean exit, socket removed.
    sigterm(&child);
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {log}", out.status);
    assert!(
        log.contains("SIGTERM") && log.contains("NBD server stopped"),
        "{log}"
    );
    assert!(!sock.exists(), "socket file left behind");
    drop(c);
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("x.sock");
    let run = |args: &[&str]| {
        let out = bin().args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let s = sock.to_str().expect("utf-8 temp path");
    assert!(run(&["nbd", "--socket", s, "--size", "4Q"]).contains("invalid size"));
    assert!(
        run(&["nbd", "--socket", s, "--size", "4G", "--max-bytes", "1G"])
            .contains("exceeds max_bytes")
    );
    assert!(run(&["nbd", "--size", "4G"]).contains("nothing to listen on"));
    assert!(
        run(&["nbd", "--socket", s, "--size", "1G", "--tcp", "0.0.0.0:1"]).contains("loopback")
    );
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "sockett: /x\n").expect("write");
    let e = run(&[
        "nbd",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--size",
        "1G",
    ]);
    assert!(e.contains("unknown field") && e.contains("bad.yaml"), "{e}");
    // A regular file where the socket should go is never deleted.
    std::fs::write(&sock, b"precious").expect("write");
    assert!(run(&["nbd", "--socket", s, "--size", "1G"]).contains("not a socket"));
    assert_eq!(std::fs::read(&sock).expect("still there"), b"precious");
}
