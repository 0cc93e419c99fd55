//! A trait over running external programs (`xl`, `mke2fs`), so that the code that drives them is
//! unit-tested with scripted outputs and no privileges (youki's Syscall pattern).

use std::process::Command;

use tracing::debug;

use crate::error::{Result, ShimError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

pub trait CommandRunner: Send + Sync {
    /// Runs `program args...` to completion. A non-zero exit is an `Ok` with that status.
    fn run(&self, program: &str, args: &[&str]) -> Result<Output>;

    /// Runs and turns a non-zero exit into `ShimError::Command`.
    fn check(&self, program: &str, args: &[&str]) -> Result<Output> {
        let out = self.run(program, args)?;
        if out.status != 0 {
            return Err(ShimError::Command {
                command: format!("{program} {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(out)
    }
}

/// Runs programs for real.
#[derive(Debug, Default, Clone)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        debug!(program, ?args, "run");
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|source| ShimError::Spawn {
                command: format!("{program} {}", args.join(" ")),
                source,
            })?;
        Ok(Output {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A runner for unit tests: answers from a script of (command line prefix, output) pairs and
/// records every call.
#[derive(Debug, Default)]
pub struct ScriptedRunner {
    pub script: std::sync::Mutex<Vec<(String, Output)>>,
    pub calls: std::sync::Mutex<Vec<String>>,
}

impl ScriptedRunner {
    pub fn answer(&self, prefix: &str, status: i32, stdout: &str, stderr: &str) {
        if let Ok(mut s) = self.script.lock() {
            s.push((
                prefix.to_string(),
                Output {
                    status,
                    stdout: stdout.to_string(),
                    stderr: stderr.to_string(),
                },
            ));
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl CommandRunner for ScriptedRunner {
    fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let line = format!("{program} {}", args.join(" "));
        if let Ok(mut c) = self.calls.lock() {
            c.push(line.clone());
        }
        let script = self
            .script
            .lock()
            .map_err(|_| ShimError::Hypervisor("scripted runner poisoned".into()))?;
        // The latest matching answer wins, so a test can change an answer midway.
        match script
            .iter()
            .rev()
            .find(|(p, _)| line.starts_with(p.as_str()))
        {
            Some((_, out)) => Ok(out.clone()),
            None => Ok(Output {
                status: 0,
                stdout: String::new(),
                stderr: String::new(),
            }),
        }
    }
}
