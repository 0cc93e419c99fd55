//! Unix-socket transport with a memfd bulk area passed by SCM_RIGHTS. The tenant identity is the
//! SO_PEERCRED of the connecting process, read by the kernel at connect time.

use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener as StdListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, getsockopt, recvmsg, sendmsg, sockopt,
};

use super::{Listener, PeerIdentity, SharedArea, Transport, write_frame};
use crate::error::{IdmError, Result};
use crate::frame::{Frame, HEADER_LEN, Header, Kind};
use crate::msg::{Message, ShmOffer};

/// One unix-socket connection.
pub struct UnixTransport {
    stream: UnixStream,
    peer: PeerIdentity,
    shm: Option<SharedArea>,
    /// Read-ahead buffer: a header and a small payload arrive with one recvmsg.
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    /// Descriptors received and not yet claimed by a ShmOffer frame.
    fds: Vec<OwnedFd>,
    /// How long a read polls before it blocks (see [`spin_from_env`]).
    spin: Duration,
}

const RBUF: usize = 64 * 1024;
const MAX_PENDING_FDS: usize = 4;

/// Largest bulk area a server maps for one connection (1 GiB).
pub const MAX_SHM: u64 = 1 << 30;

/// Busy-poll time before a read blocks: `TESSERA_IDM_SPIN_US` (default 50 µs, 0 disables).
/// A forwarded call is a round trip of two small messages; polling briefly avoids two scheduler
/// wake-ups per call, which dominate the latency of no-op calls.
pub fn spin_from_env() -> Duration {
    let us = std::env::var("TESSERA_IDM_SPIN_US")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(50)
        .min(10_000);
    Duration::from_micros(us)
}

impl UnixTransport {
    /// Client side: connects to the proxy's socket.
    pub fn connect(path: &Path) -> Result<Self> {
        let stream =
            UnixStream::connect(path).map_err(|e| IdmError::io("connect unix socket", e))?;
        Ok(Self::wrap(stream, PeerIdentity::Server))
    }

    /// Server side: wraps an accepted stream, reading the peer's credentials from the kernel.
    pub fn accepted(stream: UnixStream) -> Result<Self> {
        let cred = getsockopt(&stream, sockopt::PeerCredentials)
            .map_err(|e| IdmError::nix("SO_PEERCRED", e))?;
        let peer = PeerIdentity::Unix {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        Ok(Self::wrap(stream, peer))
    }

    fn wrap(stream: UnixStream, peer: PeerIdentity) -> Self {
        Self {
            stream,
            peer,
            shm: None,
            rbuf: vec![0; RBUF],
            rpos: 0,
            rlen: 0,
            fds: Vec::new(),
            spin: spin_from_env(),
        }
    }

    /// Sets the busy-poll time of reads (0 = always block).
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// Client side: creates a memfd area of `size` bytes and sends it to the server with
    /// SCM_RIGHTS in a [`Kind::ShmOffer`] frame. The server answers with a response frame.
    pub fn offer_shm(&mut self, size: u64, request_id: u64) -> Result<()> {
        let area = SharedArea::create(size)?;
        let frame = Message::ShmOffer(ShmOffer { size }).to_frame(request_id);
        let bytes = frame.to_bytes()?;
        let fds = [area.file().as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [IoSlice::new(&bytes)];
        let mut sent = sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| IdmError::nix("sendmsg SCM_RIGHTS", e))?;
        // The fd went with the first byte; send whatever the kernel did not take.
        while sent < bytes.len() {
            let n = nix::unistd::write(self.stream.as_fd(), &bytes[sent..])
                .map_err(|e| IdmError::nix("write", e))?;
            sent += n;
        }
        self.shm = Some(area);
        Ok(())
    }

    /// Reads more bytes into the read-ahead buffer (at least one), keeping any fd that arrives.
    /// Polls without blocking for up to `spin` first.
    fn fill(&mut self) -> Result<()> {
        if self.rpos == self.rlen {
            self.rpos = 0;
            self.rlen = 0;
        } else if self.rlen == self.rbuf.len() {
            self.rbuf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
        let fd = self.stream.as_raw_fd();
        let deadline = (!self.spin.is_zero()).then(|| Instant::now() + self.spin);
        let mut polling = deadline.is_some();
        loop {
            let mut space = nix::cmsg_space!([RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut self.rbuf[self.rlen..])];
            let flags = if polling {
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT
            } else {
                MsgFlags::MSG_CMSG_CLOEXEC
            };
            let (n, received) = match recvmsg::<()>(fd, &mut iov, Some(&mut space), flags) {
                Ok(msg) => {
                    let mut got = Vec::new();
                    for c in msg.cmsgs().map_err(|e| IdmError::nix("cmsgs", e))? {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            got.extend(raw);
                        }
                    }
                    (msg.bytes, got)
                }
                Err(Errno::EAGAIN) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        polling = false;
                    }
                    std::hint::spin_loop();
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(IdmError::nix("recvmsg", e)),
            };
            for raw in received {
                // SAFETY: the kernel just installed this fd for us; we own it now.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if self.fds.len() < MAX_PENDING_FDS {
                    self.fds.push(owned);
                }
            }
            if n == 0 {
                return Err(IdmError::Closed);
            }
            self.rlen += n;
            return Ok(());
        }
    }
}

impl Transport for UnixTransport {
    fn send(&mut self, frame: &Frame) -> Result<()> {
        write_frame(&mut self.stream, frame)
    }

    fn recv(&mut self) -> Result<Frame> {
        while self.rlen - self.rpos < HEADER_LEN {
            self.fill()?;
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.rbuf[self.rpos..self.rpos + HEADER_LEN]);
        let hdr = Header::decode(&h)?;
        self.rpos += HEADER_LEN;
        let len = hdr.len as usize;
        let have = len.min(self.rlen - self.rpos);
        let mut payload = Vec::with_capacity(len);
        payload.extend_from_slice(&self.rbuf[self.rpos..self.rpos + have]);
        self.rpos += have;
        if have < len {
            // Large payloads: the rest straight from the socket.
            payload.resize(len, 0);
            (&self.stream)
                .read_exact(&mut payload[have..])
                .map_err(|e| IdmError::io("read payload", e))?;
        }
        let frame = Frame::new(hdr.kind, hdr.request_id, payload);
        if frame.kind == Kind::ShmOffer {
            let Message::ShmOffer(offer) = Message::from_frame(&frame)? else {
                return Err(IdmError::Unexpected("shm offer".into()));
            };
            let fd = std::mem::take(&mut self.fds)
                .into_iter()
                .next()
                .ok_or_else(|| IdmError::Shm("offer arrived without a file descriptor".into()))?;
            if offer.size > MAX_SHM {
                return Err(IdmError::Shm(format!(
                    "offered area of {} bytes is over the {MAX_SHM}-byte limit",
                    offer.size
                )));
            }
            self.shm = Some(SharedArea::from_fd(fd, offer.size)?);
        } else if !self.fds.is_empty() && self.rpos == self.rlen {
            // Every byte received so far is consumed and no offer claimed the fd: it came with
            // some other frame, which is a protocol violation (dropping the fds closes them).
            self.fds.clear();
            return Err(IdmError::Unexpected(format!(
                "file descriptor on a {:?} frame",
                frame.kind
            )));
        }
        Ok(frame)
    }

    fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    fn shm(&mut self) -> Option<&mut SharedArea> {
        self.shm.as_mut()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Listens on a unix socket path; removes a stale socket file first and on drop.
pub struct UnixListener {
    inner: StdListener,
    path: PathBuf,
}

impl UnixListener {
    pub fn bind(path: &Path) -> Result<Self> {
        if path.exists() {
            std::fs::remove_file(path).map_err(|e| IdmError::io("remove stale socket", e))?;
        }
        let inner = StdListener::bind(path).map_err(|e| IdmError::io("bind unix socket", e))?;
        Ok(Self {
            inner,
            path: path.to_owned(),
        })
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Listener for UnixListener {
    fn accept(&self) -> Result<Box<dyn Transport>> {
        let (s, _) = self
            .inner
            .accept()
            .map_err(|e| IdmError::io("accept unix", e))?;
        Ok(Box::new(UnixTransport::accepted(s)?))
    }
    fn describe(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}
