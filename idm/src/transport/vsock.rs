//! AF_VSOCK transport: guest VM ↔ host. The peer's context id (CID), assigned by the hypervisor,
//! is the tenant identity.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, VsockAddr, accept, bind, connect as nix_connect,
    getpeername, listen, socket,
};

use super::{Listener, PeerIdentity, StreamTransport, Transport};
use crate::error::{IdmError, Result};

/// Any CID (bind) / the host's CID (connect from a guest) / loopback.
pub const VMADDR_CID_ANY: u32 = u32::MAX;
pub const VMADDR_CID_HOST: u32 = 2;
pub const VMADDR_CID_LOCAL: u32 = 1;

pub type VsockTransport = StreamTransport<File>;

fn new_socket() -> Result<OwnedFd> {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| IdmError::nix("socket(AF_VSOCK)", e))
}

/// Client side: connect to `cid:port`.
pub fn connect(cid: u32, port: u32) -> Result<VsockTransport> {
    let fd = new_socket()?;
    nix_connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))
        .map_err(|e| IdmError::nix("connect vsock", e))?;
    Ok(StreamTransport::new(File::from(fd), PeerIdentity::Server))
}

pub struct VsockListener {
    fd: OwnedFd,
    port: u32,
}

impl VsockListener {
    pub fn bind(cid: u32, port: u32) -> Result<Self> {
        let fd = new_socket()?;
        bind(fd.as_raw_fd(), &VsockAddr::new(cid, port))
            .map_err(|e| IdmError::nix("bind vsock", e))?;
        listen(
            &fd,
            Backlog::new(64).map_err(|e| IdmError::nix("backlog", e))?,
        )
        .map_err(|e| IdmError::nix("listen vsock", e))?;
        Ok(Self { fd, port })
    }
}

impl Listener for VsockListener {
    fn accept(&self) -> Result<Box<dyn Transport>> {
        let raw = accept(self.fd.as_raw_fd()).map_err(|e| IdmError::nix("accept vsock", e))?;
        // SAFETY: accept returned a new fd that nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr: VsockAddr =
            getpeername(fd.as_raw_fd()).map_err(|e| IdmError::nix("getpeername vsock", e))?;
        Ok(Box::new(StreamTransport::new(
            File::from(fd),
            PeerIdentity::Vsock {
                cid: addr.cid(),
                port: addr.port(),
            },
        )))
    }
    fn describe(&self) -> String {
        format!("vsock:*:{}", self.port)
    }
}
