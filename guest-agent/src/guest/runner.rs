//! Processes: spawning (chrooted into the container rootfs), reaping (the agent is PID 1, so it
//! also reaps orphans), pipe readers and the exec runner.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::error::{AgentError, Result};
use super::protocol::{CHUNK_BYTES, EXEC_OUTPUT_CAP, Stream, exit_code_of, now_ns};

/// How to start a process in the container.
#[derive(Debug, Clone)]
pub struct Launch {
    pub args: Vec<String>,
    /// The complete environment, `K=V`.
    pub env: Vec<(String, String)>,
    /// Working directory (inside `root` when chrooted).
    pub cwd: String,
    /// chroot here before exec (`None`: run in the agent's own root; unit tests).
    pub root: Option<PathBuf>,
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| AgentError::BadKey {
        key: what.to_string(),
        why: format!("{s:?} contains a NUL byte"),
    })
}

impl Launch {
    /// A `Command` with stdin from /dev/null and piped stdout/stderr; chroot + chdir + setsid
    /// happen in the child before exec.
    pub fn command(&self) -> Result<Command> {
        let (prog, rest) = self.args.split_first().ok_or_else(|| AgentError::BadKey {
            key: "args".into(),
            why: "empty".into(),
        })?;
        let root = match &self.root {
            Some(r) => Some(cstring("rootfs", &r.to_string_lossy())?),
            None => None,
        };
        let cwd = cstring("workingDir", &self.cwd)?;
        let mut cmd = Command::new(prog);
        cmd.args(rest)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure only makes async-signal-safe syscalls on memory prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(root) = &root
                    && libc::chroot(root.as_ptr()) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::chdir(cwd.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::setsid();
                Ok(())
            });
        }
        Ok(cmd)
    }
}

/// The exit code reported when the process could not be started at all (shell convention).
pub fn spawn_failure_code(e: &std::io::Error) -> i32 {
    match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// Reaps every child of the process. Children spawned through [`Reaper::spawn`] get their
/// status on a channel; anything else (orphans re-parented to PID 1) is just reaped.
#[derive(Debug)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, Sender<ExitStatus>>>,
}

/// The process-wide reaper (started on first use).
pub fn reaper() -> &'static Reaper {
    static R: OnceLock<&'static Reaper> = OnceLock::new();
    R.get_or_init(|| {
        let r: &'static Reaper = Box::leak(Box::new(Reaper {
            waiting: Mutex::new(HashMap::new()),
        }));
        if let Err(e) = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())
        {
            tracing::error!("cannot start the reaper thread: {e}");
        }
        r
    })
}

impl Reaper {
    /// Spawns `cmd`; the receiver yields its exit status once.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, Receiver<ExitStatus>)> {
        // Held across fork so that the reaper cannot reap the child before it is registered
        // (and cannot steal the status std collects itself when exec fails).
        let mut w = self
            .waiting
            .lock()
            .map_err(|_| std::io::Error::other("reaper lock poisoned"))?;
        let child = cmd.spawn()?;
        let (tx, rx) = mpsc::channel();
        w.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    fn run(&self) {
        loop {
            // Peek (WNOWAIT) so a child is reaped only once we know whose it is.
            // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointer to a siginfo_t.
            let rc =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    std::thread::sleep(Duration::from_millis(50)); // ECHILD: no children yet
                }
                continue;
            }
            // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
            let pid = unsafe { info.si_pid() };
            let Ok(mut w) = self.waiting.lock() else {
                return;
            };
            let mut status = 0;
            // SAFETY: plain syscall with a valid out pointer.
            let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if got == pid {
                if let Some(tx) = w.remove(&pid) {
                    let _ = tx.send(ExitStatus::from_raw(status));
                } else {
                    tracing::debug!(pid, "reaped an orphan");
                }
            }
        }
    }
}

/// What a pipe reader sends to the agent loop.
#[derive(Debug)]
pub enum LogMsg {
    Data {
        stream: Stream,
        t: u128,
        bytes: Vec<u8>,
    },
    Eof(Stream),
}

/// Reads `pipe` in chunks of at most [`CHUNK_BYTES`] and sends them; blocks when the channel is
/// full (back-pressure to the process).
pub fn spawn_log_reader(
    mut pipe: impl Read + Send + 'static,
    stream: Stream,
    tx: SyncSender<LogMsg>,
) {
    let r = std::thread::Builder::new()
        .name(format!("log-{stream:?}"))
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let msg = LogMsg::Data {
                            stream,
                            t: now_ns(),
                            bytes: buf[..n].to_vec(),
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!("{stream:?} pipe read: {e}");
                        break;
                    }
                }
            }
            let _ = tx.send(LogMsg::Eof(stream));
        });
    if let Err(e) = r {
        tracing::error!("cannot start the {stream:?} reader: {e}");
    }
}

/// The outcome of one exec request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    pub truncated: bool,
}

fn read_capped(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut truncated = false;
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = EXEC_OUTPUT_CAP.saturating_sub(out.len());
                    if n > room {
                        truncated = true;
                    }
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        (out, truncated)
    })
}

/// Runs one exec request to completion (killing it after `timeout` when non-zero).
pub fn run_exec(launch: &Launch, timeout: Option<Duration>) -> ExecOutcome {
    let mut cmd = match launch.command() {
        Ok(c) => c,
        Err(e) => return failed_exec(126, &e.to_string()),
    };
    let (mut child, rx) = match reaper().spawn(&mut cmd) {
        Ok(x) => x,
        Err(e) => {
            return failed_exec(
                spawn_failure_code(&e),
                &format!("tessera-guest-agent: exec {}: {e}\n", launch.args[0]),
            );
        }
    };
    let pid = child.id() as i32;
    let out = child.stdout.take().map(read_capped);
    let err = child.stderr.take().map(read_capped);
    let mut timed_out = false;
    let status = match timeout {
        Some(t) => match rx.recv_timeout(t) {
            Ok(s) => Some(s),
            Err(_) => {
                timed_out = true;
                // SAFETY: plain syscall; pid is our unreaped child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                rx.recv().ok()
            }
        },
        None => rx.recv().ok(),
    };
    let join = |h: Option<std::thread::JoinHandle<(Vec<u8>, bool)>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let (stdout, t1) = join(out);
    let (stderr, t2) = join(err);
    ExecOutcome {
        exit_code: status.map(exit_code_of).unwrap_or(255),
        stdout,
        stderr,
        timed_out,
        truncated: t1 || t2,
    }
}

fn failed_exec(code: i32, msg: &str) -> ExecOutcome {
    ExecOutcome {
        exit_code: code,
        stdout: Vec::new(),
        stderr: msg.as_bytes().to_vec(),
        timed_out: false,
        truncated: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(args: &[&str]) -> Launch {
        Launch {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("X".into(), "42".into()),
            ],
            cwd: "/".into(),
            root: None,
        }
    }

    #[test]
    fn exec_collects_output_env_and_exit_code() {
        let o = run_exec(
            &launch(&["sh", "-c", "echo out $X; echo err >&2; exit 3"]),
            None,
        );
        assert_eq!(o.exit_code, 3);
        assert_eq!(o.stdout, b"out 42\n");
        assert_eq!(o.stderr, b"err\n");
        assert!(!o.timed_out);
    }

    #[test]
    fn exec_of_a_missing_binary_is_127() {
        let o = run_exec(&launch(&["/nonexistent/bin"]), None);
        assert_eq!(o.exit_code, 127);
        assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/bin"));
    }

    #[test]
    fn exec_timeout_kills() {
        let o = run_exec(&launch(&["sleep", "30"]), Some(Duration::from_millis(300)));
        assert!(o.timed_out);
        assert_eq!(o.exit_code, 128 + libc::SIGKILL);
    }

    #[test]
    fn exec_output_is_capped() {
        let o = run_exec(
            &launch(&[
                "sh",
                "-c",
                &format!("head -c {} /dev/zero", EXEC_OUTPUT_CAP + 10),
            ]),
            None,
        );
        assert_eq!(o.stdout.len(), EXEC_OUTPUT_CAP);
        assert!(o.truncated);
    }
}
