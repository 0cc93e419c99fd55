//! The container-running half of `tessera-guest-agent`: PID 1 of each `tessera-xen` domain.
//! It talks to the shim in dom0 only through xenstore (docs/xen-guest-protocol.md).
//!
//! - [`xenbus`]: the xenstore wire-protocol client and the [`xenbus::Store`] trait;
//! - [`protocol`]: key names, value types, log/exec encodings;
//! - [`agent`]: the protocol logic (spec → rootfs → start → logs/exit/signals/exec);
//! - [`runner`]: chrooted spawning, PID-1 reaping, pipe readers, exec;
//! - [`sys`]: mounts, modules, power-off; [`init`]: the binary's entry point.

pub mod agent;
pub mod error;
pub mod init;
pub mod protocol;
pub mod runner;
pub mod sys;
pub mod xenbus;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
