//! The host-memory export driven by the real Debian NBD clients: qemu-img, qemu-io (qemu-utils),
//! nbdinfo and nbdcopy (libnbd-bin). Each test skips with one line when its client is absent.

mod common;

use std::process::Command;

use common::{TestServer, have, pattern, run, sha256};
use tessera_nbd::client::Client;

const MIB: u64 = 1 << 20;

#[test]
fn nbdinfo_sees_export_flags_and_block_sizes() {
    if !have("nbdinfo") {
        return;
    }
    let s = TestServer::start(96 * MIB, "");
    let out = run(Command::new("nbdinfo").arg("--json").arg(s.uri()));
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --json output");
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 96 * MIB);
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 * MIB);
    for flag in [
        "can_flush",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_multi_conn",
        "can_fua",
        "can_df",
    ] {
        assert_eq!(e[flag], true, "{flag} in {e}");
    }
    assert_eq!(e["is_read_only"], false);
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["TLS"], false);
    // Listing exports goes through NBD_OPT_LIST.
    let list = run(Command::new("nbdinfo")
        .arg("--list")
        .arg("--json")
        .arg(s.uri()));
    let v: serde_json::Value = serde_json::from_str(&list).expect("nbdinfo --list --json");
    assert_eq!(v["exports"].as_array().map(Vec::len), Some(1));
    s.stop();
}

#[test]
fn named_export_and_unknown_name() {
    if !have("nbdinfo") {
        return;
    }
    let s = TestServer::start(8 * MIB, "vram0");
    let uri = format!("nbd+unix:///vram0?socket={}", s.socket.display());
    let out = run(Command::new("nbdinfo").arg("--size").arg(&uri));
    assert_eq!(out.trim(), (8 * MIB).to_string());
    let wrong = format!("nbd+unix:///nope?socket={}", s.socket.display());
    let st = Command::new("nbdinfo")
        .arg("--size")
        .arg(&wrong)
        .output()
        .expect("nbdinfo");
    assert!(!st.status.success(), "unknown export must be refused");
    s.stop();
}

#[test]
fn qemu_img_info_and_convert_roundtrip() {
    if !have("qemu-img") {
        return;
    }
    let s = TestServer::start(48 * MIB, "");
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(s.uri()));
    let v: serde_json::Value = serde_json::from_str(&info).expect("qemu-img info json");
    assert_eq!(v["virtual-size"], 48 * MIB);

    let src = s.dir.path().join("src.raw");
    std::fs::write(&src, pattern(48 * MIB as usize, 7)).expect("write src");
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(s.uri()));
    let back = s.dir.path().join("back.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(s.uri())
        .arg(&back));
    assert_eq!(sha256(&src), sha256(&back));
    // qemu-img compare reads both through their own drivers.
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(s.uri()));
    s.stop();
}

#[test]
fn nbdcopy_roundtrip_with_multi_conn() {
    nbdcopy_roundtrip(TestServer::start(64 * MIB, ""));
}

#[test]
fn nbdcopy_roundtrip_task_per_request_path() {
    nbdcopy_roundtrip(TestServer::start_concurrent(64 * MIB, ""));
}

fn nbdcopy_roundtrip(s: TestServer) {
    if !have("nbdcopy") {
        return;
    }
    let src = s.dir.path().join("src.raw");
    std::fs::write(&src, pattern(64 * MIB as usize, 11)).expect("write src");
    // nbdcopy opens several connections when the server offers CAN_MULTI_CONN.
    run(Command::new("nbdcopy")
        .args(["--connections=4", "--requests=16"])
        .arg(&src)
        .arg(s.uri()));
    let back = s.dir.path().join("back.raw");
    run(Command::new("nbdcopy")
        .args(["--connections=4"])
        .arg(s.uri())
        .arg(&back));
    assert_eq!(sha256(&src), sha256(&back));
    s.stop();
}

#[test]
fn qemu_io_zero_trim_and_unaligned_writes_read_back() {
    qemu_io_checks(TestServer::start(16 * MIB, ""));
}

#[test]
fn qemu_io_checks_task_per_request_path() {
    qemu_io_checks(TestServer::start_concurrent(16 * MIB, ""));
}

fn qemu_io_checks(s: TestServer) {
    if !have("qemu-io") {
        return;
    }
    let io = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        c.arg(s.uri());
        run(&mut c)
    };
    // Fill 4 MiB with 0xab, zero the 2nd MiB (write -z), discard the 3rd MiB, unaligned write at the end.
    io(&[
        "write -P 0xab 0 4M",
        "write -z 1M 1M",
        "discard 2M 1M",
        "write -P 0x5c 3145729 1000",
    ]);
    let out = io(&[
        "read -P 0xab 0 1M",
        "read -P 0 1M 2M",
        "read -P 0x5c 3145729 1000",
        "read -P 0xab 3146729 1047575",
    ]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // And the same bytes through our own client, both reply styles.
    for structured in [false, true] {
        let mut c = Client::connect(&s.target(), "", structured).expect("connect");
        assert_eq!(c.structured, structured);
        let mut buf = vec![0u8; 4 * MIB as usize];
        assert_eq!(c.read_at(0, &mut buf).expect("read"), 0);
        assert!(buf[..MIB as usize].iter().all(|&b| b == 0xab));
        assert!(buf[MIB as usize..3 * MIB as usize].iter().all(|&b| b == 0));
        assert!(
            buf[3 * MIB as usize + 1..3 * MIB as usize + 1001]
                .iter()
                .all(|&b| b == 0x5c)
        );
        c.disconnect().expect("disc");
    }
    s.stop();
}

#[test]
fn multi_conn_writes_are_visible_to_every_connection_after_flush() {
    // What CAN_MULTI_CONN promises: once writes on several connections are replied to and one
    // connection flushes, every connection reads them.
    let s = TestServer::start(16 * MIB, "");
    let target = s.target();
    std::thread::scope(|sc| {
        for i in 0..4u64 {
            let target = target.clone();
            sc.spawn(move || {
                let mut c = Client::connect(&target, "", i % 2 == 0).expect("connect");
                for k in 0..16u64 {
                    let off = (i * 16 + k) * 256 * 1024;
                    assert_eq!(
                        c.write_at(off, &pattern(256 * 1024, off + 1))
                            .expect("write"),
                        0
                    );
                }
                c.disconnect().expect("disc");
            });
        }
    });
    let mut f = Client::connect(&target, "", true).expect("connect");
    assert_eq!(
        f.command(tessera_nbd::proto::CMD_FLUSH, 0, 0, 0, &[])
            .expect("flush"),
        0
    );
    let mut r = Client::connect(&target, "", false).expect("connect");
    let mut buf = vec![0u8; 256 * 1024];
    for blk in 0..64u64 {
        let off = blk * 256 * 1024;
        assert_eq!(r.read_at(off, &mut buf).expect("read"), 0);
        assert_eq!(buf, pattern(256 * 1024, off + 1), "block {blk}");
    }
    s.stop();
}

#[test]
fn metrics_count_bytes_requests_and_latency() {
    let s = TestServer::start(8 * MIB, "");
    let mut c = Client::connect(&s.target(), "", false).expect("connect");
    assert_eq!(c.write_at(0, &pattern(3 * 4096, 5)).expect("write"), 0);
    let mut buf = vec![0u8; 4096];
    assert_eq!(c.read_at(0, &mut buf).expect("read"), 0);
    assert_eq!(
        c.read_at(8 * MIB, &mut buf).expect("read"),
        tessera_nbd::proto::EINVAL
    );
    c.disconnect().expect("disc");
    // Scraped over HTTP like Prometheus does.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let cancel = tokio_util::sync::CancellationToken::new();
    let text = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = tessera_nbd::metrics::serve(
            s.metrics.clone(),
            "127.0.0.1:0".parse().expect("addr"),
            cancel.clone(),
        )
        .await
        .expect("serve metrics");
        let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
        sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut out = String::new();
        sock.read_to_string(&mut out).await.expect("read");
        out
    });
    cancel.cancel();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("tessera_nbd_written_bytes_total 12288"),
        "{text}"
    );
    assert!(text.contains("tessera_nbd_read_bytes_total 4096"), "{text}");
    assert!(
        text.contains(r#"tessera_nbd_requests_total{op="read",error="EINVAL"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tessera_nbd_request_duration_seconds_count{op="write"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("tessera_nbd_allocated_bytes 1048576"),
        "{text}"
    );
    s.stop();
}
