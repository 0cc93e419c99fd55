//! The memfd bulk area of a unix-socket connection: the client creates it, passes the fd with
//! SCM_RIGHTS, and both sides map it. Copies then move through it instead of the socket.

use std::fs::File;
use std::os::fd::OwnedFd;

use memmap2::MmapMut;

use crate::error::{IdmError, Result};

/// A shared mapping. Only one request uses it at a time (the client waits for the reply before it
/// touches the area again), which is what makes handing out plain slices sound in practice.
pub struct SharedArea {
    map: MmapMut,
    file: File,
}

impl SharedArea {
    /// Creates a new anonymous memfd area of `size` bytes (client side).
    pub fn create(size: u64) -> Result<Self> {
        let fd = nix::sys::memfd::memfd_create(
            c"tessera-idm-bulk",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| IdmError::nix("memfd_create", e))?;
        let file = File::from(fd);
        file.set_len(size)
            .map_err(|e| IdmError::io("ftruncate memfd", e))?;
        Self::map(file)
    }

    /// Maps an area received from the peer (server side).
    pub fn from_fd(fd: OwnedFd, expected: u64) -> Result<Self> {
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(|e| IdmError::io("fstat memfd", e))?
            .len();
        if len != expected {
            return Err(IdmError::Shm(format!(
                "offered size {expected} but the fd is {len} bytes"
            )));
        }
        Self::map(file)
    }

    fn map(file: File) -> Result<Self> {
        // SAFETY: the file is a memfd of fixed size (we never truncate it afterwards); the peer may
        // write to it concurrently only while it is not waiting for us, per the protocol.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| IdmError::io("mmap memfd", e))?;
        Ok(Self { map, file })
    }

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// The fd to pass to the peer.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>> {
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= self.len())
            .ok_or_else(|| {
                IdmError::Shm(format!(
                    "range {offset}+{len} outside the {}-byte area",
                    self.len()
                ))
            })?;
        Ok(offset as usize..end as usize)
    }
    pub fn slice(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let r = self.range(offset, len)?;
        Ok(&self.map[r])
    }
    pub fn slice_mut(&mut self, offset: u64, len: u64) -> Result<&mut [u8]> {
        let r = self.range(offset, len)?;
        Ok(&mut self.map[r])
    }
    /// Base address of the mapping (for pinning it with the CUDA driver).
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }
}
