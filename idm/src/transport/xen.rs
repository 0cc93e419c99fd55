//! Xen shared-ring transport: **designed here, built with the CRI/Xen issue**. Nothing in this
//! module moves bytes yet; [`XenRingListener::bind`] returns [`IdmError::Unsupported`].
//!
//! Design:
//! - The guest agent allocates `ring_pages` pages, grants them to dom0 (grant table), and writes
//!   `grant_refs` plus an unbound event-channel port to xenstore under
//!   `/local/domain/<domid>/device/tessera-idm/<n>/` (the shim creates the node with the claim).
//! - The ring holds two byte-stream halves (request and response), each with producer/consumer
//!   indices, in the layout of Xen's `console`-style byte rings. IDM frames are written into the
//!   halves exactly as on a socket, so framing and decoding are shared with the other transports.
//! - Bulk copies use separately granted pages (the equivalent of the memfd area), mapped by the
//!   proxy with `xengnttab`.
//! - The tenant identity is the domid xenstore reports for the granting domain; the guest never
//!   states it.

use crate::error::{IdmError, Result};

/// What the guest publishes in xenstore for one IDM channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XenRingConfig {
    /// The guest domain (the tenant identity).
    pub domid: u32,
    /// Grant references of the ring pages, in order.
    pub grant_refs: Vec<u32>,
    /// Grant references of the bulk-copy pages.
    pub bulk_grant_refs: Vec<u32>,
    /// The guest's unbound event-channel port.
    pub event_channel: u32,
    /// Number of 4 KiB ring pages (a power of two).
    pub ring_pages: u32,
}

/// Dom0 side listener of Xen rings (watches xenstore for new channels).
pub struct XenRingListener {
    _private: (),
}

impl XenRingListener {
    /// Not built yet: see the module documentation.
    pub fn bind(_xenstore_root: &str) -> Result<Self> {
        Err(IdmError::Unsupported(
            "the Xen shared-ring transport is built with the CRI/Xen issue",
        ))
    }
}
