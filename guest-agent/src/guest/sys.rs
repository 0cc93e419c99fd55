//! PID 1 duties inside the domain: early mounts, kernel modules, the rootfs mount, power-off.

use std::ffi::CString;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::{AgentError, Result};

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| AgentError::Protocol(format!("{s:?} contains NUL")))
}

/// mount(2); `EBUSY` (already mounted) is fine.
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| AgentError::io(format!("mkdir {target}"), e))?;
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr("")?);
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(AgentError::io(
                format!("mount {fstype} {source} on {target}"),
                e,
            ));
        }
    }
    Ok(())
}

/// proc, sysfs, devtmpfs, /run and /tmp.
pub fn early_mounts() -> Result<()> {
    mount("proc", "/proc", "proc", 0)?;
    mount("sysfs", "/sys", "sysfs", 0)?;
    mount("devtmpfs", "/dev", "devtmpfs", 0)?;
    mount("tmpfs", "/run", "tmpfs", 0)?;
    mount("tmpfs", "/tmp", "tmpfs", 0)?;
    Ok(())
}

/// Loads the modules listed (one path per line, dependencies first) in `list`. Already loaded
/// ones are fine; a module that fails (e.g. `crc32c-intel` on a CPU without SSE4.2: ENODEV) is
/// reported and skipped: what is really missing shows up as a clear mount error later.
/// Returns (loaded, failed descriptions).
pub fn load_modules(list: &Path) -> Result<(usize, Vec<String>)> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) => return Err(AgentError::io(format!("read {}", list.display()), e)),
    };
    let mut n = 0;
    let mut failed = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f = match std::fs::File::open(line) {
            Ok(f) => f,
            Err(e) => {
                failed.push(format!("{line}: {e}"));
                continue;
            }
        };
        let params = cstr("")?;
        // SAFETY: valid fd and NUL-terminated params.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                failed.push(format!("{line}: {e}"));
                continue;
            }
        }
        n += 1;
    }
    Ok((n, failed))
}

/// Waits for `/dev/<device>` and mounts it (`fstype`) at `target`.
pub fn mount_rootfs(device: &str, fstype: &str, target: &Path, wait: Duration) -> Result<()> {
    let dev = format!("/dev/{device}");
    let t0 = Instant::now();
    while !Path::new(&dev).exists() {
        if t0.elapsed() > wait {
            return Err(AgentError::io(
                format!("rootfs device {dev} did not appear within {wait:?}"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!(device = %dev, waited_ms = t0.elapsed().as_millis() as u64, "rootfs device present");
    mount(&dev, &target.to_string_lossy(), fstype, 0)
}

/// Seconds since boot, for log lines that time the boot.
pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Powers the domain off (PID 1 must never exit: the kernel would panic).
pub fn power_off() -> ! {
    // SAFETY: plain syscalls.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
