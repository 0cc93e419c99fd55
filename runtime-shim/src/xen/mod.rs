//! The Xen backend: a hypervisor trait with its `xl` implementation, per-domain xenstore keys, and
//! the runtime that turns CRI pods into domains.

pub mod hypervisor;
pub mod runtime;
pub mod store;

pub use hypervisor::{DomainSpec, DomainType, Hypervisor, XlHypervisor};
pub use runtime::{XenConfig, XenRuntime};
pub use store::{MemStore, XenStore, XsUnixStore};
