//! Frame layout. Every IDM frame is a fixed 20-byte header followed by `len` payload bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TSRA` (0x41525354 little-endian) |
//! | 4 | 2 | frame format version (1) |
//! | 6 | 2 | frame kind ([`Kind`]) |
//! | 8 | 8 | request id (responses echo the request's id; events use 0) |
//! | 16 | 4 | payload length, at most [`MAX_PAYLOAD`] |

use crate::error::{IdmError, Result};

/// `TSRA` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TSRA");
/// The only frame format version of this release. The *protocol* version is negotiated separately
/// in the handshake so message sets can evolve without changing the header.
pub const FRAME_VERSION: u16 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 20;
/// Largest payload accepted: 64 MiB of inline data plus room for the fields around it. Bigger copies
/// are chunked by the sender (or go through the shared-memory area).
pub const MAX_PAYLOAD: u32 = 64 * 1024 * 1024 + 4096;
/// Largest inline data chunk a sender puts in one frame.
pub const MAX_INLINE_CHUNK: usize = 32 * 1024 * 1024;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// Client → server: versions supported, client name.
    Hello = 1,
    /// Server → client: chosen version and limits, or a refusal.
    Welcome = 2,
    /// A CUDA call.
    Request = 3,
    /// The answer to one request (same request id).
    Response = 4,
    /// Asynchronous notification, server → client.
    Event = 5,
    /// Client → server over a unix socket: a memfd bulk area rides along with SCM_RIGHTS.
    ShmOffer = 6,
    /// Orderly close by either side.
    Goodbye = 7,
}

impl Kind {
    pub fn from_u16(v: u16) -> Result<Self> {
        Ok(match v {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Request,
            4 => Kind::Response,
            5 => Kind::Event,
            6 => Kind::ShmOffer,
            7 => Kind::Goodbye,
            other => return Err(IdmError::UnknownKind(other)),
        })
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub request_id: u64,
    pub len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..6].copy_from_slice(&FRAME_VERSION.to_le_bytes());
        h[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        h[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        h[16..20].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    /// Validates magic, version, kind and length before any payload is read or allocated.
    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<Self> {
        let word = |a: usize| u32::from_le_bytes([h[a], h[a + 1], h[a + 2], h[a + 3]]);
        let half = |a: usize| u16::from_le_bytes([h[a], h[a + 1]]);
        let magic = word(0);
        if magic != MAGIC {
            return Err(IdmError::BadMagic(magic));
        }
        let ver = half(4);
        if ver != FRAME_VERSION {
            return Err(IdmError::UnsupportedFrameVersion(ver));
        }
        let kind = Kind::from_u16(half(6))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[8..16]);
        let len = word(16);
        if len > MAX_PAYLOAD {
            return Err(IdmError::TooLong {
                len: u64::from(len),
                max: u64::from(MAX_PAYLOAD),
            });
        }
        Ok(Header {
            kind,
            request_id: u64::from_le_bytes(id),
            len,
        })
    }
}

/// A whole frame: header fields plus payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub request_id: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: Kind, request_id: u64, payload: Vec<u8>) -> Self {
        Self {
            kind,
            request_id,
            payload,
        }
    }

    pub fn header(&self) -> Result<Header> {
        let len = u32::try_from(self.payload.len())
            .ok()
            .filter(|l| *l <= MAX_PAYLOAD)
            .ok_or(IdmError::TooLong {
                len: self.payload.len() as u64,
                max: u64::from(MAX_PAYLOAD),
            })?;
        Ok(Header {
            kind: self.kind,
            request_id: self.request_id,
            len,
        })
    }

    /// Header and payload as one buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let h = self.header()?.encode();
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&h);
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Decodes exactly one frame from `buf` (no trailing bytes allowed).
    pub fn from_bytes(buf: &[u8]) -> Result<Self> {
        if buf.len() < HEADER_LEN {
            return Err(IdmError::Truncated {
                at: buf.len(),
                needed: HEADER_LEN - buf.len(),
            });
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&buf[..HEADER_LEN]);
        let hdr = Header::decode(&h)?;
        let body = &buf[HEADER_LEN..];
        let len = hdr.len as usize;
        if body.len() < len {
            return Err(IdmError::Truncated {
                at: buf.len(),
                needed: len - body.len(),
            });
        }
        if body.len() > len {
            return Err(IdmError::TrailingBytes(body.len() - len));
        }
        Ok(Frame::new(hdr.kind, hdr.request_id, body.to_vec()))
    }
}
