//! Images for Xen pods: references, the local OCI store, and rootfs disk images.

pub mod auth_cache;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod store;

pub use auth_cache::PullAuthCache;
pub use reference::Reference;
pub use store::{ImageConfig, ImageStore, StoredImage};
