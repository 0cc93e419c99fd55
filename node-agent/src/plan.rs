//! Plans: the steps that take a node from what it has to what a StoragePool asks for.
//!
//! A plan is computed from machine-readable state only, before anything is written. Steps that
//! can destroy data are marked, logged with their device when run, and only planned when the pool
//! allows them (`devicePolicy: Wipe`). Anything that would destroy data without that permission,
//! or reshape what holds data, becomes a refusal instead of a step: the whole plan is then not run.

use serde::Serialize;

/// One command of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What it does, in words.
    pub description: String,
    /// The command (program and arguments, no shell).
    pub command: Vec<String>,
    /// Whether it can destroy data on `device`.
    pub destructive: bool,
    /// The device it writes to, when there is one.
    pub device: Option<String>,
}

impl Step {
    pub fn new(description: impl Into<String>, command: &[&str]) -> Step {
        Step {
            description: description.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            destructive: false,
            device: None,
        }
    }

    pub fn destructive(mut self, device: &str) -> Step {
        self.destructive = true;
        self.device = Some(device.to_string());
        self
    }
}

/// Why a plan cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// CamelCase reason for conditions and Events, e.g. `DeviceHasSignature`.
    pub reason: String,
    pub message: String,
}

/// A plan: steps to run in order, or refusals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub refusals: Vec<Refusal>,
}

impl Plan {
    pub fn refuse(&mut self, reason: &str, message: impl Into<String>) {
        self.refusals.push(Refusal {
            reason: reason.into(),
            message: message.into(),
        });
    }

    /// Nothing to do (the node already matches).
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty() && self.refusals.is_empty()
    }
}
