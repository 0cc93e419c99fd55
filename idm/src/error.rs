//! The one error type of `tessera-idm`.

use thiserror::Error;

/// Everything that can go wrong while framing, decoding or moving IDM messages.
#[derive(Debug, Error)]
pub enum IdmError {
    /// The first four bytes of a frame are not the IDM magic.
    #[error("bad frame magic {0:#010x} (expected {expected:#010x})", expected = crate::frame::MAGIC)]
    BadMagic(u32),
    /// The frame format version is not one this build understands.
    #[error("unsupported frame format version {0}")]
    UnsupportedFrameVersion(u16),
    /// The frame kind byte is unknown.
    #[error("unknown frame kind {0}")]
    UnknownKind(u16),
    /// The payload length is over the limit; the frame is rejected before anything is allocated.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: u64, max: u64 },
    /// The payload ended before a field was complete.
    #[error("truncated payload: needed {needed} more bytes at offset {at}")]
    Truncated { at: usize, needed: usize },
    /// Bytes were left over after the message was decoded.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// An enum tag inside the payload is unknown.
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u32 },
    /// A string field is not UTF-8.
    #[error("string field is not valid UTF-8")]
    BadUtf8,
    /// A field value is out of its allowed range.
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// The handshake failed (no common version, or the peer refused).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A frame of the wrong kind arrived at this point of the conversation.
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    /// The peer closed the connection.
    #[error("peer closed the connection")]
    Closed,
    /// The shared-memory area is missing, too small, or the range is outside it.
    #[error("shared memory: {0}")]
    Shm(String),
    /// The transport is designed but not built in this release.
    #[error("transport not available: {0}")]
    Unsupported(&'static str),
    /// An operating-system call failed.
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl IdmError {
    /// Wraps an I/O error with the operation that failed; EOF becomes [`IdmError::Closed`].
    pub fn io(op: &'static str, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            IdmError::Closed
        } else {
            IdmError::Io { op, source }
        }
    }

    /// Wraps a nix errno.
    pub fn nix(op: &'static str, e: nix::Error) -> Self {
        IdmError::Io {
            op,
            source: std::io::Error::from(e),
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, IdmError>;
