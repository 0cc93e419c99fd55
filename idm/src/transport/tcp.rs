//! TCP transport, for GPUs in another machine. The peer address is the identity; a deployment
//! that uses it must put it behind an authenticated channel (see README). RDMA would slot in
//! behind the same [`Transport`] trait.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};

use super::{Listener, PeerIdentity, StreamTransport, Transport};
use crate::error::{IdmError, Result};

pub type TcpTransport = StreamTransport<TcpStream>;

/// Client side.
pub fn connect(addr: SocketAddr) -> Result<TcpTransport> {
    let s = TcpStream::connect(addr).map_err(|e| IdmError::io("connect tcp", e))?;
    // Calls are small request/response pairs: Nagle would add 40 ms to each.
    s.set_nodelay(true)
        .map_err(|e| IdmError::io("TCP_NODELAY", e))?;
    Ok(StreamTransport::new(s, PeerIdentity::Server))
}

pub struct TcpListener {
    inner: StdListener,
}

impl TcpListener {
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            inner: StdListener::bind(addr).map_err(|e| IdmError::io("bind tcp", e))?,
        })
    }
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.inner
            .local_addr()
            .map_err(|e| IdmError::io("local_addr", e))
    }
}

impl Listener for TcpListener {
    fn accept(&self) -> Result<Box<dyn Transport>> {
        let (s, addr) = self
            .inner
            .accept()
            .map_err(|e| IdmError::io("accept tcp", e))?;
        s.set_nodelay(true)
            .map_err(|e| IdmError::io("TCP_NODELAY", e))?;
        Ok(Box::new(StreamTransport::new(
            s,
            PeerIdentity::Tcp { addr },
        )))
    }
    fn describe(&self) -> String {
        match self.inner.local_addr() {
            Ok(a) => format!("tcp:{a}"),
            Err(_) => "tcp:?".into(),
        }
    }
}
