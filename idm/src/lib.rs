//! `tessera-idm`: inter-domain messaging between the stand-in `libcuda.so.1` in a guest and the
//! GPU proxy that owns the device.
//!
//! - [`frame`]: the 20-byte header (magic, format version, kind, request id, length) and limits;
//! - [`msg`]: CUDA calls, responses (`CUresult` + value), events, handshake messages;
//! - [`handshake`]: version negotiation and a synchronous [`handshake::Client`];
//! - [`transport`]: unix socket + memfd bulk area, TCP, vsock, and the Xen ring design.

pub mod codec;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod msg;
pub mod transport;

pub use error::{IdmError, Result};
pub use frame::{Frame, Kind};
pub use handshake::Client;
pub use msg::{Call, Event, Message, ParamInfo, Payload, Reply, Response, cu};
pub use transport::{Listener, PeerIdentity, SharedArea, Transport};
