//! `tessera-node-agent`: one per node. Inventory (disks, signatures, SMART, GPUs, Xen), SMART
//! judgement, and StoragePool planning/apply through real `mdadm`, `lvm` and `zpool`/`zfs`, all
//! behind the [`runner::Runner`] trait so that planning is unit-tested without root.

pub mod apply;
pub mod controller;
mod error;
pub mod exports;
pub mod inventory;
pub mod lvm;
pub mod md;
pub mod metrics;
pub mod plan;
pub mod runner;
pub mod schedule;
pub mod smart;
pub mod verify;
pub mod zfs;

pub use error::{Error, Result};
