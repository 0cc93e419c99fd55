//! Transports: one trait, several carriers. The tenant identity of a connection always comes from
//! the transport (kernel-verified peer credentials, vsock CID, Xen domid), never from a message.

use std::io::{Read, Write};

use crate::error::{IdmError, Result};
use crate::frame::{Frame, HEADER_LEN, Header};

mod shm;
pub mod tcp;
pub mod unix;
pub mod vsock;
pub mod xen;

pub use shm::SharedArea;

/// Who is on the other end, as the transport (not the peer) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Unix socket: SO_PEERCRED of the connecting process.
    Unix { pid: i32, uid: u32, gid: u32 },
    /// AF_VSOCK: the peer's context id (one per VM) and port.
    Vsock { cid: u32, port: u32 },
    /// TCP: the peer address. Not an authenticated identity by itself (see README).
    Tcp { addr: std::net::SocketAddr },
    /// Xen shared ring: the peer domain id as reported by xenstore.
    Xen { domid: u32 },
    /// The client end of a connection (the server needs no identity).
    Server,
}

impl PeerIdentity {
    /// A stable label for logs and metrics.
    pub fn label(&self) -> String {
        match self {
            PeerIdentity::Unix { pid, uid, .. } => format!("unix:uid={uid},pid={pid}"),
            PeerIdentity::Vsock { cid, .. } => format!("vsock:cid={cid}"),
            PeerIdentity::Tcp { addr } => format!("tcp:{addr}"),
            PeerIdentity::Xen { domid } => format!("xen:domid={domid}"),
            PeerIdentity::Server => "server".to_owned(),
        }
    }
}

/// A bidirectional, ordered, reliable frame carrier.
pub trait Transport: Send {
    /// Sends one frame.
    fn send(&mut self, frame: &Frame) -> Result<()>;
    /// Receives the next frame; malformed headers are rejected before the payload is read.
    fn recv(&mut self) -> Result<Frame>;
    /// The peer's identity as established by the transport.
    fn peer(&self) -> &PeerIdentity;
    /// The connection's shared bulk area, if this transport has one and it was set up.
    fn shm(&mut self) -> Option<&mut SharedArea> {
        None
    }
    /// For transport-specific set-up (e.g. offering a memfd area on a unix socket).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Accepts connections of one transport kind.
pub trait Listener: Send + Sync {
    fn accept(&self) -> Result<Box<dyn Transport>>;
    /// For logs: where it listens.
    fn describe(&self) -> String;
}

/// Writes a frame to any byte stream.
pub(crate) fn write_frame<W: Write>(w: &mut W, frame: &Frame) -> Result<()> {
    let h = frame.header()?.encode();
    // Small frames go out in one syscall: calls are latency-bound.
    if frame.payload.len() <= SMALL_FRAME {
        let mut buf = Vec::with_capacity(h.len() + frame.payload.len());
        buf.extend_from_slice(&h);
        buf.extend_from_slice(&frame.payload);
        w.write_all(&buf)
            .map_err(|e| IdmError::io("write frame", e))?;
    } else {
        w.write_all(&h)
            .map_err(|e| IdmError::io("write frame", e))?;
        w.write_all(&frame.payload)
            .map_err(|e| IdmError::io("write frame", e))?;
    }
    w.flush().map_err(|e| IdmError::io("flush", e))
}

/// Frames up to this payload size are written with one syscall.
const SMALL_FRAME: usize = 64 * 1024;

/// Reads a frame from any byte stream, validating the header first.
pub(crate) fn read_frame<R: Read>(r: &mut R) -> Result<Frame> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h)
        .map_err(|e| IdmError::io("read header", e))?;
    read_body(r, Header::decode(&h)?)
}

pub(crate) fn read_body<R: Read>(r: &mut R, hdr: Header) -> Result<Frame> {
    let mut payload = vec![0u8; hdr.len as usize];
    r.read_exact(&mut payload)
        .map_err(|e| IdmError::io("read payload", e))?;
    Ok(Frame::new(hdr.kind, hdr.request_id, payload))
}

/// A transport over any stream (TCP, vsock): framing only, identity fixed at accept time.
pub struct StreamTransport<S> {
    stream: S,
    peer: PeerIdentity,
}

impl<S: Read + Write + Send> StreamTransport<S> {
    pub fn new(stream: S, peer: PeerIdentity) -> Self {
        Self { stream, peer }
    }
}

impl<S: Read + Write + Send + 'static> Transport for StreamTransport<S> {
    fn send(&mut self, frame: &Frame) -> Result<()> {
        write_frame(&mut self.stream, frame)
    }
    fn recv(&mut self) -> Result<Frame> {
        read_frame(&mut self.stream)
    }
    fn peer(&self) -> &PeerIdentity {
        &self.peer
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
