//! A small blocking NBD client: enough for the 4 KiB random-read benchmark and for tests that
//! check replies byte by byte. Not a general client (no TLS, no block status).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::proto::{self, Request};

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::str::FromStr for Target {
    type Err = Error;
    /// `unix:/path`, a path starting with `/`, or `host:port`.
    fn from_str(s: &str) -> Result<Self> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Target::Unix(p.into()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Target::Unix(s.into()));
        }
        s.parse()
            .map(Target::Tcp)
            .map_err(|_| Error::Config(format!("{s:?}: expected unix:/path or host:port")))
    }
}

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub fn dial(t: &Target) -> Result<Box<dyn Stream>> {
    Ok(match t {
        Target::Unix(p) => Box::new(UnixStream::connect(p)?),
        Target::Tcp(a) => {
            let s = TcpStream::connect(a)?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    })
}

/// A stream whose reads are buffered (replies are parsed in small pieces) and writes are not.
struct ReadBuffered(io::BufReader<Box<dyn Stream>>);

impl Read for ReadBuffered {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}

impl Write for ReadBuffered {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.get_mut().write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.get_mut().flush()
    }
}

/// A connection in the transmission phase.
pub struct Client {
    s: ReadBuffered,
    pub size: u64,
    pub flags: u16,
    pub structured: bool,
    pub block_size: Option<(u32, u32, u32)>,
    cookie: u64,
}

fn proto_err(m: impl Into<String>) -> Error {
    Error::Protocol(m.into())
}

fn read_u16(s: &mut dyn Stream) -> io::Result<u16> {
    let mut b = [0u8; 2];
    s.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn read_u32(s: &mut dyn Stream) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(s: &mut dyn Stream) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Send one option (IHAVEOPT, option, length, data).
pub fn send_option(s: &mut dyn Stream, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)
}

/// Read one option reply: (option, reply type, payload).
pub fn read_option_reply(s: &mut dyn Stream) -> Result<(u32, u32, Vec<u8>)> {
    let magic = read_u64(s)?;
    if magic != proto::OPT_REPLY_MAGIC {
        return Err(proto_err(format!("bad option reply magic {magic:#x}")));
    }
    let opt = read_u32(s)?;
    let kind = read_u32(s)?;
    let len = read_u32(s)?;
    if len > 1 << 20 {
        return Err(proto_err("option reply too long"));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data)?;
    Ok((opt, kind, data))
}

/// Read the server greeting and send our flags; returns the handshake flags.
pub fn greet(s: &mut dyn Stream) -> Result<u16> {
    if read_u64(s)? != proto::NBDMAGIC || read_u64(s)? != proto::IHAVEOPT {
        return Err(proto_err("not a newstyle NBD server"));
    }
    let flags = read_u16(s)?;
    s.write_all(&(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_be_bytes())?;
    Ok(flags)
}

impl Client {
    /// Connect and negotiate with NBD_OPT_GO for `export`, optionally asking for structured replies.
    pub fn connect(t: &Target, export: &str, structured: bool) -> Result<Self> {
        let mut s = ReadBuffered(io::BufReader::with_capacity(256 * 1024, dial(t)?));
        greet(&mut s)?;
        let mut got_structured = false;
        if structured {
            send_option(&mut s, proto::OPT_STRUCTURED_REPLY, &[])?;
            let (_, kind, _) = read_option_reply(&mut s)?;
            got_structured = kind == proto::REP_ACK;
        }
        let mut d = Vec::new();
        d.extend_from_slice(&(export.len() as u32).to_be_bytes());
        d.extend_from_slice(export.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
        send_option(&mut s, proto::OPT_GO, &d)?;
        let (mut size, mut flags, mut block_size) = (None, 0u16, None);
        loop {
            let (_, kind, data) = read_option_reply(&mut s)?;
            match kind {
                proto::REP_ACK => break,
                proto::REP_INFO if data.len() >= 2 => {
                    match u16::from_be_bytes([data[0], data[1]]) {
                        proto::INFO_EXPORT if data.len() == 12 => {
                            size = Some(u64::from_be_bytes(
                                data[2..10].try_into().map_err(|_| proto_err("info"))?,
                            ));
                            flags = u16::from_be_bytes([data[10], data[11]]);
                        }
                        proto::INFO_BLOCK_SIZE if data.len() == 14 => {
                            let g = |i: usize| {
                                u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]])
                            };
                            block_size = Some((g(2), g(6), g(10)));
                        }
                        _ => {}
                    }
                }
                k if k & (1 << 31) != 0 => {
                    return Err(proto_err(format!(
                        "GO refused: {k:#x} {}",
                        String::from_utf8_lossy(&data)
                    )));
                }
                _ => {}
            }
        }
        let size = size.ok_or_else(|| proto_err("server sent no NBD_INFO_EXPORT"))?;
        Ok(Self {
            s,
            size,
            flags,
            structured: got_structured,
            block_size,
            cookie: 0,
        })
    }

    fn next_cookie(&mut self) -> u64 {
        self.cookie += 1;
        self.cookie
    }

    /// Send a raw request header (and payload); used by tests to send invalid requests.
    pub fn send(&mut self, req: &Request, payload: &[u8]) -> Result<()> {
        self.s.write_all(&req.encode())?;
        self.s.write_all(payload)?;
        Ok(())
    }

    /// Read the reply to a non-read request (or a failed read): its cookie and NBD error value.
    pub fn read_status(&mut self) -> Result<(u64, u32)> {
        let magic = read_u32(&mut self.s)?;
        match magic {
            proto::SIMPLE_REPLY_MAGIC => {
                let err = read_u32(&mut self.s)?;
                let cookie = read_u64(&mut self.s)?;
                Ok((cookie, err))
            }
            proto::STRUCTURED_REPLY_MAGIC => {
                let (cookie, err, _) = self.structured_rest(None)?;
                Ok((cookie, err))
            }
            m => Err(proto_err(format!("bad reply magic {m:#x}"))),
        }
    }

    /// Rest of a structured reply whose magic was read: collects chunks until DONE.
    fn structured_rest(&mut self, mut into: Option<(&mut [u8], u64)>) -> Result<(u64, u32, u64)> {
        let mut first = true;
        let mut got = 0u64;
        loop {
            if !first && read_u32(&mut self.s)? != proto::STRUCTURED_REPLY_MAGIC {
                return Err(proto_err("bad structured chunk magic"));
            }
            first = false;
            let flags = read_u16(&mut self.s)?;
            let kind = read_u16(&mut self.s)?;
            let cookie = read_u64(&mut self.s)?;
            let len = read_u32(&mut self.s)?;
            let mut err = 0u32;
            match kind {
                proto::REPLY_TYPE_OFFSET_DATA => {
                    let off = read_u64(&mut self.s)?;
                    let n = len
                        .checked_sub(8)
                        .ok_or_else(|| proto_err("short data chunk"))?
                        as usize;
                    match into.as_mut() {
                        Some((buf, base))
                            if off >= *base && off - *base + n as u64 <= buf.len() as u64 =>
                        {
                            let at = (off - *base) as usize;
                            self.s.read_exact(&mut buf[at..at + n])?;
                        }
                        _ => return Err(proto_err("data chunk outside the request")),
                    }
                    got += n as u64;
                }
                _ => {
                    let mut p = vec![0u8; len as usize];
                    self.s.read_exact(&mut p)?;
                    if kind & (1 << 15) != 0 && p.len() >= 4 {
                        err = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                    }
                }
            }
            if flags & proto::REPLY_FLAG_DONE != 0 || err != 0 {
                if err != 0 && flags & proto::REPLY_FLAG_DONE == 0 {
                    return Err(proto_err(
                        "error chunk without DONE: not produced by our server",
                    ));
                }
                return Ok((cookie, err, got));
            }
        }
    }

    /// Read `buf.len()` bytes at `offset`; `Ok(err)` carries the server's NBD error value.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<u32> {
        let cookie = self.next_cookie();
        let req = Request {
            flags: 0,
            kind: proto::CMD_READ,
            cookie,
            offset,
            len: buf.len() as u32,
        };
        self.send(&req, &[])?;
        self.read_reply(cookie, offset, buf)
    }

    /// Parse the reply to a READ sent with [`Client::send`] (simple or structured).
    pub fn read_reply(&mut self, cookie: u64, offset: u64, buf: &mut [u8]) -> Result<u32> {
        let magic = read_u32(&mut self.s)?;
        let (c, err) = match magic {
            proto::SIMPLE_REPLY_MAGIC => {
                let err = read_u32(&mut self.s)?;
                let c = read_u64(&mut self.s)?;
                if err == 0 {
                    self.s.read_exact(buf)?;
                }
                (c, err)
            }
            proto::STRUCTURED_REPLY_MAGIC => {
                let (c, err, got) = self.structured_rest(Some((buf, offset)))?;
                if err == 0 && got != buf.len() as u64 {
                    return Err(proto_err("structured read returned too little data"));
                }
                (c, err)
            }
            m => return Err(proto_err(format!("bad reply magic {m:#x}"))),
        };
        if c != cookie {
            return Err(proto_err("reply cookie mismatch"));
        }
        Ok(err)
    }

    /// A command with no reply payload; returns the NBD error value.
    pub fn command(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<u32> {
        let cookie = self.next_cookie();
        self.send(
            &Request {
                flags,
                kind,
                cookie,
                offset,
                len,
            },
            payload,
        )?;
        let (c, err) = self.read_status()?;
        if c != cookie {
            return Err(proto_err("reply cookie mismatch"));
        }
        Ok(err)
    }

    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<u32> {
        self.command(proto::CMD_WRITE, 0, offset, data.len() as u32, data)
    }

    pub fn disconnect(mut self) -> Result<()> {
        let cookie = self.next_cookie();
        self.send(
            &Request {
                flags: 0,
                kind: proto::CMD_DISC,
                cookie,
                offset: 0,
                len: 0,
            },
            &[],
        )?;
        Ok(())
    }

    /// `count` reads of `block` bytes at random block-aligned offsets in `[0, span)`, with `depth`
    /// requests in flight. Returns the elapsed time. Offsets come from a fixed-seed xorshift so
    /// every server gets the same sequence.
    pub fn random_reads(
        &mut self,
        count: u64,
        block: u32,
        depth: usize,
        span: u64,
        seed: u64,
    ) -> Result<Duration> {
        let blocks = (span.min(self.size) / block as u64).max(1);
        let mut x = seed | 1;
        let mut next_off = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * block as u64
        };
        let mut hdr_batch = Vec::with_capacity(depth * proto::REQUEST_LEN);
        let mut buf = vec![0u8; block as usize];
        let start = Instant::now();
        let mut sent = 0u64;
        let first = (depth as u64).min(count);
        for _ in 0..first {
            let cookie = self.next_cookie();
            let req = Request {
                flags: 0,
                kind: proto::CMD_READ,
                cookie,
                offset: next_off(),
                len: block,
            };
            hdr_batch.extend_from_slice(&req.encode());
            sent += 1;
        }
        self.s.write_all(&hdr_batch)?;
        let mut done = 0u64;
        while done < count {
            // Replies may arrive in any order; the cookie is not needed to check data here.
            let magic = read_u32(&mut self.s)?;
            match magic {
                proto::SIMPLE_REPLY_MAGIC => {
                    let err = read_u32(&mut self.s)?;
                    let _cookie = read_u64(&mut self.s)?;
                    if err != 0 {
                        return Err(proto_err(format!("read failed with NBD error {err}")));
                    }
                    self.s.read_exact(&mut buf)?;
                }
                _ => return Err(proto_err("benchmark client expects simple replies")),
            }
            done += 1;
            if sent < count {
                let cookie = self.next_cookie();
                let req = Request {
                    flags: 0,
                    kind: proto::CMD_READ,
                    cookie,
                    offset: next_off(),
                    len: block,
                };
                self.s.write_all(&req.encode())?;
                sent += 1;
            }
        }
        Ok(start.elapsed())
    }
}
