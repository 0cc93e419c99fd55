//! `tessera-raid` exit codes and messages on bad input (the real-kernel cases are in `make e2e-md`).

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::process::Command;

fn raid(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_tessera-raid"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_members_exit_2_naming_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.img");
    let (rc, _, err) = raid(&["md", "verify", missing.to_str().unwrap()]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("nope.img"), "{err}");

    let blank = dir.path().join("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let (rc, _, err) = raid(&["md", "verify", blank.to_str().unwrap()]);
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("blank.img") && err.contains("no md superblock"),
        "{err}"
    );

    // Raw mode (LVM rimages): --out naming a member is refused before anything is written.
    let m: Vec<String> = (0..4)
        .map(|i| {
            let p = dir.path().join(format!("r{i}.img"));
            std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
            p.to_str().unwrap().to_string()
        })
        .collect();
    let mut args = vec![
        "md",
        "read",
        "--level",
        "5",
        "--layout",
        "raid5_ls",
        "--chunk",
        "64K",
        "--data-offset",
        "0",
        "--out",
        &m[2],
    ];
    args.extend(m.iter().map(|s| s.as_str()));
    let (rc, _, err) = raid(&args);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("members are never written"), "{err}");
    assert_eq!(std::fs::read(&m[2]).unwrap(), vec![0u8; 1 << 20]);

    // Unknown layout name.
    let mut args = vec![
        "md",
        "verify",
        "--level",
        "6",
        "--layout",
        "diagonal",
        "--chunk",
        "64K",
        "--data-offset",
        "0",
    ];
    args.extend(m.iter().map(|s| s.as_str()));
    let (rc, _, err) = raid(&args);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("diagonal"), "{err}");

    // All-zero members are a consistent RAID5 (P = XOR of zeros): verify passes, JSON parses.
    let mut args = vec![
        "md",
        "verify",
        "--json",
        "--level",
        "5",
        "--layout",
        "raid5_ls",
        "--chunk",
        "64K",
        "--data-offset",
        "0",
    ];
    args.extend(m.iter().map(|s| s.as_str()));
    let (rc, out, err) = raid(&args);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["report"]["stripes_checked"], 16);
    assert_eq!(v["report"]["mismatches"].as_array().unwrap().len(), 0);
}
