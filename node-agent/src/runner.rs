//! The trait over commands and files that privileged code goes through (youki's Syscall pattern),
//! so that planning and parsing are unit-tested without root, and a dry run can log instead of act.

use std::collections::VecDeque;
use std::process::Command;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Output of a finished command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// Runs commands and reads files on the node.
pub trait Runner: Send + Sync {
    /// Run a command to completion (no shell).
    fn run(&self, program: &str, args: &[&str]) -> Result<Output>;
    /// Read a file (sysfs, procfs), `None` when it does not exist.
    fn read(&self, path: &str) -> Result<Option<String>>;

    /// Write a sysfs attribute.
    fn write(&self, path: &str, content: &str) -> Result<()> {
        std::fs::write(path, content).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })
    }

    /// Whether a path exists (a device node, a sysfs file).
    fn exists(&self, path: &str) -> bool {
        std::path::Path::new(path).exists()
    }

    /// The canonical path of a device (symlinks such as `/dev/disk/by-id/...` resolved), or the
    /// path itself when it cannot be resolved.
    fn canonical(&self, path: &str) -> String {
        std::fs::canonicalize(path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.to_string())
    }

    /// Run and require success.
    fn check(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.run(program, args)?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(Error::Command {
                cmd: format!("{program} {}", args.join(" ")),
                status: out.status,
                stderr: out.stderr,
            })
        }
    }
}

/// The real node.
#[derive(Debug, Default)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let cmd = format!("{program} {}", args.join(" "));
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => Error::ToolMissing(program.to_string()),
                _ => Error::Spawn {
                    cmd: cmd.clone(),
                    source,
                },
            })?;
        tracing::debug!(%cmd, status = %out.status, "ran");
        Ok(Output {
            success: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn read(&self, path: &str) -> Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Read {
                path: path.into(),
                source,
            }),
        }
    }
}

/// A scripted runner for unit tests of logic: answers commands by prefix, records every call.
#[derive(Debug, Default)]
pub struct ScriptedRunner {
    answers: Mutex<Vec<(String, VecDeque<Output>)>>,
    files: Mutex<Vec<(String, String)>>,
    missing: Mutex<Vec<String>>,
    pub calls: Mutex<Vec<String>>,
}

impl ScriptedRunner {
    /// Answer commands whose `program args...` line starts with `prefix` with `stdout` (success).
    pub fn ok(&self, prefix: &str, stdout: &str) -> &Self {
        self.push(
            prefix,
            Output {
                success: true,
                status: "exit status: 0".into(),
                stdout: stdout.into(),
                stderr: String::new(),
            },
        )
    }

    /// Answer with a failure.
    pub fn fail(&self, prefix: &str, stderr: &str) -> &Self {
        self.push(
            prefix,
            Output {
                success: false,
                status: "exit status: 1".into(),
                stdout: String::new(),
                stderr: stderr.into(),
            },
        )
    }

    fn push(&self, prefix: &str, out: Output) -> &Self {
        if let Ok(mut a) = self.answers.lock() {
            match a.iter_mut().find(|(p, _)| p == prefix) {
                Some((_, q)) => q.push_back(out),
                None => a.push((prefix.into(), VecDeque::from([out]))),
            }
        }
        self
    }

    /// Serve `content` for `path`.
    pub fn file(&self, path: &str, content: &str) -> &Self {
        if let Ok(mut f) = self.files.lock() {
            f.push((path.into(), content.into()));
        }
        self
    }

    /// Make `path` not exist (every other path exists).
    pub fn missing(&self, path: &str) -> &Self {
        if let Ok(mut m) = self.missing.lock() {
            m.push(path.into());
        }
        self
    }

    /// Every command run so far.
    pub fn history(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Runner for ScriptedRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let line = format!("{program} {}", args.join(" "));
        if let Ok(mut c) = self.calls.lock() {
            c.push(line.clone());
        }
        let mut answers = self.answers.lock().map_err(|_| Error::Parse {
            what: "runner".into(),
            message: "poisoned".into(),
        })?;
        // Longest matching prefix wins; the last queued answer repeats.
        let best = answers
            .iter_mut()
            .filter(|(p, _)| line.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len());
        match best {
            Some((_, q)) if q.len() > 1 => Ok(q.pop_front().unwrap_or_default()),
            Some((_, q)) => Ok(q.front().cloned().unwrap_or_default()),
            None => Ok(Output {
                success: false,
                status: "exit status: 127".into(),
                stdout: String::new(),
                stderr: format!("unscripted: {line}"),
            }),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.missing
            .lock()
            .map(|m| !m.iter().any(|p| p == path))
            .unwrap_or(true)
    }

    fn write(&self, path: &str, content: &str) -> Result<()> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(format!("write {path} {content}"));
        }
        Ok(())
    }

    fn read(&self, path: &str) -> Result<Option<String>> {
        Ok(self
            .files
            .lock()
            .ok()
            .and_then(|f| f.iter().find(|(p, _)| p == path).map(|(_, c)| c.clone())))
    }
}
