//! A small client of the xenstore wire protocol, as spoken on `/dev/xen/xenbus` inside a domain
//! (and on xenstored's unix socket in dom0). Written here so that this crate stays Apache-2.0.
//!
//! Each message is a header of four little-endian `u32` (type, request id, transaction id,
//! payload length) followed by the payload (at most 4096 bytes). Paths are NUL-terminated;
//! a WRITE's value follows its path's NUL without one. Replies carry the request's id;
//! `WATCH_EVENT` messages (`path\0token\0`) can arrive between a request and its reply and are
//! queued for [`Store::next_event`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::error::{AgentError, Result};

pub const XS_DIRECTORY: u32 = 1;
pub const XS_READ: u32 = 2;
pub const XS_WATCH: u32 = 4;
pub const XS_UNWATCH: u32 = 5;
pub const XS_WRITE: u32 = 11;
pub const XS_MKDIR: u32 = 12;
pub const XS_RM: u32 = 13;
pub const XS_WATCH_EVENT: u32 = 15;
pub const XS_ERROR: u32 = 16;

/// The largest payload xenstored accepts (path + value of a WRITE together).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
const HEADER_LEN: usize = 16;

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(AgentError::Protocol(format!(
                "payload of {} bytes exceeds the xenstore limit of {XENSTORE_PAYLOAD_MAX}",
                self.payload.len()
            )));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        for v in [
            self.kind,
            self.req_id,
            self.tx_id,
            self.payload.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Takes one complete message off the front of `buf`, if there is one.
    pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Message>> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let (kind, req_id, tx_id, len) = (word(0), word(4), word(8), word(12) as usize);
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(AgentError::Protocol(format!(
                "message length {len} too large"
            )));
        }
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        buf.drain(..HEADER_LEN + len);
        Ok(Some(Message {
            kind,
            req_id,
            tx_id,
            payload,
        }))
    }
}

/// A fired watch: the path that changed and the token given to `watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// The xenstore operations the agent needs. The real one is [`XenbusClient`]; unit tests use an
/// in-memory fake.
pub trait Store {
    /// `Ok(None)` when the key does not exist.
    fn read(&mut self, path: &str) -> Result<Option<String>>;
    fn write(&mut self, path: &str, value: &str) -> Result<()>;
    /// Children of `path`; empty when it does not exist.
    fn directory(&mut self, path: &str) -> Result<Vec<String>>;
    fn rm(&mut self, path: &str) -> Result<()>;
    fn watch(&mut self, path: &str, token: &str) -> Result<()>;
    /// The next watch event, waiting at most `timeout`.
    fn next_event(&mut self, timeout: Duration) -> Result<Option<WatchEvent>>;
}

/// A byte stream to xenstored that can wait for readability.
pub trait Transport: Read + Write {
    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool>;
}

/// A file descriptor transport: `/dev/xen/xenbus` or xenstored's unix socket.
#[derive(Debug)]
pub struct FdTransport<T>(pub T);

impl<T: Read> Read for FdTransport<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<T: Write> Write for FdTransport<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<T: Read + Write + AsRawFd> Transport for FdTransport<T> {
    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
            0 => Ok(false),
            _ => Ok(true),
        }
    }
}

/// The xenstore client: synchronous requests, watch events queued.
#[derive(Debug)]
pub struct XenbusClient<T: Transport> {
    io: T,
    next_req: u32,
    rbuf: Vec<u8>,
    events: VecDeque<WatchEvent>,
}

/// Default device inside a domain.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

impl XenbusClient<FdTransport<std::fs::File>> {
    /// Opens `/dev/xen/xenbus` (or `path`).
    pub fn open_device(path: &str) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| AgentError::io(format!("open {path}"), e))?;
        Ok(XenbusClient::new(FdTransport(f)))
    }
}

impl XenbusClient<FdTransport<std::os::unix::net::UnixStream>> {
    /// Connects to xenstored's unix socket (dom0 tools use `/run/xenstored/socket`).
    pub fn connect_socket(path: &str) -> Result<Self> {
        let s = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| AgentError::io(format!("connect {path}"), e))?;
        Ok(XenbusClient::new(FdTransport(s)))
    }
}

fn nul_path(path: &str) -> Vec<u8> {
    let mut v = path.as_bytes().to_vec();
    v.push(0);
    v
}

fn utf8(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| AgentError::Protocol(format!("non-UTF-8 value: {e}")))
}

fn split_nul(payload: &[u8]) -> Vec<String> {
    payload
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn op_name(kind: u32) -> &'static str {
    match kind {
        XS_DIRECTORY => "DIRECTORY",
        XS_READ => "READ",
        XS_WATCH => "WATCH",
        XS_UNWATCH => "UNWATCH",
        XS_WRITE => "WRITE",
        XS_MKDIR => "MKDIR",
        XS_RM => "RM",
        _ => "OP",
    }
}

impl<T: Transport> XenbusClient<T> {
    pub fn new(io: T) -> Self {
        XenbusClient {
            io,
            next_req: 1,
            rbuf: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// Reads whatever is available (blocking) into the buffer.
    fn fill(&mut self) -> Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            match self.io.read(&mut buf) {
                Ok(0) => return Err(AgentError::Closed),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&buf[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(AgentError::io("xenbus read", e)),
            }
        }
    }

    fn queue_event(&mut self, msg: &Message) {
        let parts = split_nul(&msg.payload);
        if let [path, token, ..] = parts.as_slice() {
            self.events.push_back(WatchEvent {
                path: path.clone(),
                token: token.clone(),
            });
        }
    }

    /// Sends one request and returns its reply payload (watch events met meanwhile are queued).
    pub fn request(&mut self, kind: u32, path: &str, payload: Vec<u8>) -> Result<Vec<u8>> {
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let bytes = Message {
            kind,
            req_id,
            tx_id: 0,
            payload,
        }
        .encode()?;
        self.io
            .write_all(&bytes)
            .map_err(|e| AgentError::io("xenbus write", e))?;
        loop {
            while let Some(msg) = Message::decode(&mut self.rbuf)? {
                if msg.kind == XS_WATCH_EVENT {
                    self.queue_event(&msg);
                    continue;
                }
                if msg.req_id != req_id {
                    tracing::debug!(
                        got = msg.req_id,
                        want = req_id,
                        "stray xenbus reply dropped"
                    );
                    continue;
                }
                if msg.kind == XS_ERROR {
                    let errno = split_nul(&msg.payload)
                        .into_iter()
                        .next()
                        .unwrap_or_default();
                    return Err(AgentError::Xenstore {
                        op: op_name(kind),
                        path: path.to_string(),
                        errno,
                    });
                }
                if msg.kind != kind {
                    return Err(AgentError::Protocol(format!(
                        "reply type {} to request type {kind}",
                        msg.kind
                    )));
                }
                return Ok(msg.payload);
            }
            self.fill()?;
        }
    }
}

fn is_enoent(e: &AgentError) -> bool {
    matches!(e, AgentError::Xenstore { errno, .. } if errno == "ENOENT")
}

impl<T: Transport> Store for XenbusClient<T> {
    fn read(&mut self, path: &str) -> Result<Option<String>> {
        match self.request(XS_READ, path, nul_path(path)) {
            Ok(v) => Ok(Some(utf8(v)?)),
            Err(e) if is_enoent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write(&mut self, path: &str, value: &str) -> Result<()> {
        let mut p = nul_path(path);
        p.extend_from_slice(value.as_bytes());
        self.request(XS_WRITE, path, p).map(|_| ())
    }

    fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        match self.request(XS_DIRECTORY, path, nul_path(path)) {
            Ok(v) => Ok(split_nul(&v)),
            Err(e) if is_enoent(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn rm(&mut self, path: &str) -> Result<()> {
        match self.request(XS_RM, path, nul_path(path)) {
            Ok(_) => Ok(()),
            Err(e) if is_enoent(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        let mut p = nul_path(path);
        p.extend_from_slice(&nul_path(token));
        self.request(XS_WATCH, path, p).map(|_| ())
    }

    fn next_event(&mut self, timeout: Duration) -> Result<Option<WatchEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(Some(ev));
            }
            while let Some(msg) = Message::decode(&mut self.rbuf)? {
                if msg.kind == XS_WATCH_EVENT {
                    self.queue_event(&msg);
                } else {
                    tracing::debug!(kind = msg.kind, "unexpected xenbus message while idle");
                }
            }
            if let Some(ev) = self.events.pop_front() {
                return Ok(Some(ev));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ready = self
                .io
                .wait_readable(left)
                .map_err(|e| AgentError::io("xenbus poll", e))?;
            if ready {
                self.fill()?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scripted transport: records what the client writes, answers from a queue of messages.
    struct Script {
        written: Vec<u8>,
        replies: VecDeque<Vec<u8>>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.replies.pop_front() {
                Some(mut r) => {
                    let n = r.len().min(buf.len());
                    buf[..n].copy_from_slice(&r[..n]);
                    if n < r.len() {
                        r.drain(..n);
                        self.replies.push_front(r);
                    }
                    Ok(n)
                }
                None => Ok(0),
            }
        }
    }
    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Transport for Script {
        fn wait_readable(&mut self, _t: Duration) -> io::Result<bool> {
            Ok(!self.replies.is_empty())
        }
    }

    fn msg(kind: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
        Message {
            kind,
            req_id,
            tx_id: 0,
            payload: payload.to_vec(),
        }
        .encode()
        .expect("small")
    }

    #[test]
    fn header_is_four_le_u32() {
        let b = msg(XS_READ, 7, b"domid\0");
        assert_eq!(&b[..4], &2u32.to_le_bytes());
        assert_eq!(&b[4..8], &7u32.to_le_bytes());
        assert_eq!(&b[8..12], &0u32.to_le_bytes());
        assert_eq!(&b[12..16], &6u32.to_le_bytes());
        assert_eq!(&b[16..], b"domid\0");
    }

    #[test]
    fn decode_waits_for_a_whole_message() {
        let full = msg(XS_WRITE, 3, b"OK\0");
        let mut buf = full[..10].to_vec();
        assert_eq!(Message::decode(&mut buf).expect("ok"), None);
        buf.extend_from_slice(&full[10..]);
        buf.extend_from_slice(&full[..4]);
        let m = Message::decode(&mut buf).expect("ok").expect("complete");
        assert_eq!(
            (m.kind, m.req_id, m.payload.as_slice()),
            (XS_WRITE, 3, &b"OK\0"[..])
        );
        assert_eq!(buf.len(), 4);
    }

    #[test]
    fn oversized_payload_is_refused() {
        let m = Message {
            kind: XS_WRITE,
            req_id: 1,
            tx_id: 0,
            payload: vec![b'x'; XENSTORE_PAYLOAD_MAX + 1],
        };
        assert!(m.encode().is_err());
    }

    #[test]
    fn read_write_directory_error_and_events_in_between() {
        // Replies split across reads, a watch event before the READ reply.
        let mut replies = VecDeque::new();
        let mut r1 = msg(XS_WATCH_EVENT, 0, b"/local/domain/3/tessera/control\0ctl\0");
        r1.extend(msg(XS_READ, 1, b"3"));
        replies.push_back(r1[..20].to_vec());
        replies.push_back(r1[20..].to_vec());
        replies.push_back(msg(XS_WRITE, 2, b"OK\0"));
        replies.push_back(msg(XS_DIRECTORY, 3, b"0\x001\x00"));
        replies.push_back(msg(XS_ERROR, 4, b"ENOENT\0"));
        replies.push_back(msg(XS_ERROR, 5, b"EACCES\0"));
        let mut c = XenbusClient::new(Script {
            written: Vec::new(),
            replies,
        });
        assert_eq!(c.read("domid").expect("read"), Some("3".to_string()));
        c.write("data/tessera/state", "created").expect("write");
        assert_eq!(c.directory("x").expect("dir"), vec!["0", "1"]);
        assert_eq!(c.read("missing").expect("read"), None);
        let err = c.write("tessera/version", "2").expect_err("EACCES");
        assert!(err.to_string().contains("EACCES"), "{err}");
        let ev = c
            .next_event(Duration::from_millis(1))
            .expect("event")
            .expect("queued");
        assert_eq!(ev.path, "/local/domain/3/tessera/control");
        assert_eq!(ev.token, "ctl");
        // The WRITE request on the wire: path NUL value, no trailing NUL.
        let w = &c.io.written;
        let mut buf = w.clone();
        let first = Message::decode(&mut buf).expect("ok").expect("read req");
        assert_eq!(first.payload, b"domid\0");
        let second = Message::decode(&mut buf).expect("ok").expect("write req");
        assert_eq!(second.kind, XS_WRITE);
        assert_eq!(second.payload, b"data/tessera/state\0created");
    }
}
