//! The NBD server: newstyle fixed handshake, option haggling, and the transmission phase with
//! requests handled concurrently per connection (replies may complete out of order, as NBD allows).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, StoreError};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, OpLabels, ResultLabels};

use crate::proto::{self, Request};

/// Largest READ/WRITE payload accepted (advertised as the maximum block size).
pub const MAX_BLOCK: u32 = 32 << 20;
/// Advertised preferred block size.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Socket send buffer asked for: a 256 KiB..2 MiB read reply then leaves in one write.
const SEND_BUFFER: usize = 4 << 20;
/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// A client must finish the handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Payload bytes in flight per connection (in KiB permits): bounds memory per client.
const INFLIGHT_KIB: u32 = 256 * 1024;
/// The largest spare buffer kept (fresh large buffers cost an mmap and page faults).
const POOL_MAX_LEN: usize = 4 << 20;

/// What the server exports and with what it counts.
pub struct Shared {
    pub export_name: String,
    pub description: String,
    pub backend: Arc<dyn Backend>,
    pub metrics: Arc<Metrics>,
    /// Serve every request in its own task, as for device stores (see `force_concurrent`).
    concurrent: bool,
    /// Spare request buffers, shared by all connections so new connections start warm.
    pool: ConnPool,
}

impl Shared {
    pub fn new(
        export_name: impl Into<String>,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let description = backend.describe();
        Self {
            export_name: export_name.into(),
            description,
            backend,
            metrics,
            concurrent: false,
            pool: Arc::new(Mutex::new((Vec::new(), 0))),
        }
    }

    /// Use the one-task-per-request transmission path even for a memory store. Device stores
    /// always use it; this lets machines without a GPU test that path with real clients.
    pub fn force_concurrent(mut self) -> Self {
        self.concurrent = true;
        self
    }

    /// Transmission flags for this export. CAN_MULTI_CONN: see README ("Multi-connection safety").
    fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = proto::TF_HAS_FLAGS
            | proto::TF_SEND_FLUSH
            | proto::TF_SEND_FUA
            | proto::TF_SEND_TRIM
            | proto::TF_SEND_WRITE_ZEROES
            | proto::TF_SEND_FAST_ZERO
            | proto::TF_CAN_MULTI_CONN;
        if structured {
            f |= proto::TF_SEND_DF;
        }
        f
    }
}

enum Bound {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// An NBD server with one export, listening on any number of unix sockets and TCP addresses.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Bound>,
    cancel: CancellationToken,
    grace: Duration,
}

impl Server {
    pub fn new(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
            listeners: Vec::new(),
            cancel: CancellationToken::new(),
            grace: SHUTDOWN_GRACE,
        }
    }

    /// Cancelling this token stops the server: no new connections, in-flight requests finish,
    /// the store is flushed and socket files are removed.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// How long shutdown waits for in-flight requests (default 10 s).
    pub fn set_shutdown_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Listen on a unix socket. A stale socket file (nobody listening) is replaced; a live one or
    /// any other kind of file is an error, never deleted.
    pub async fn bind_unix(&mut self, path: &Path) -> Result<()> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(Error::Config(format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                )));
            }
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(Error::Config(format!(
                    "{} is in use by a running server",
                    path.display()
                )));
            }
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path)?;
        }
        let l = UnixListener::bind(path).map_err(|source| Error::Bind {
            what: path.display().to_string(),
            source,
        })?;
        self.listeners.push(Bound::Unix(l, path.to_path_buf()));
        Ok(())
    }

    /// Listen on TCP; returns the bound address (port 0 picks a free port).
    pub async fn bind_tcp(&mut self, addr: SocketAddr) -> Result<SocketAddr> {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                what: addr.to_string(),
                source,
            })?;
        let bound = l.local_addr()?;
        self.listeners.push(Bound::Tcp(l));
        Ok(bound)
    }

    /// Serve until the cancel token fires, then shut down cleanly.
    pub async fn run(self) -> Result<()> {
        let tracker = TaskTracker::new();
        let mut sockets = Vec::new();
        for l in self.listeners {
            let (shared, cancel, conns) =
                (self.shared.clone(), self.cancel.clone(), tracker.clone());
            match l {
                Bound::Unix(l, path) => {
                    sockets.push(path);
                    tracker.spawn(async move {
                        loop {
                            let s = tokio::select! {
                                _ = cancel.cancelled() => break,
                                r = l.accept() => r,
                            };
                            match s {
                                Ok((s, _)) => {
                                    crate::sys::set_send_buffer(&s, SEND_BUFFER);
                                    let (r, w) = s.into_split();
                                    conns.spawn(connection(
                                        r,
                                        w,
                                        shared.clone(),
                                        cancel.clone(),
                                        "unix".into(),
                                    ));
                                }
                                Err(e) => accept_error(e).await,
                            }
                        }
                    });
                }
                Bound::Tcp(l) => {
                    tracker.spawn(async move {
                        loop {
                            let s = tokio::select! {
                                _ = cancel.cancelled() => break,
                                r = l.accept() => r,
                            };
                            match s {
                                Ok((s, peer)) => {
                                    let _ = s.set_nodelay(true);
                                    crate::sys::set_send_buffer(&s, SEND_BUFFER);
                                    let (r, w) = s.into_split();
                                    conns.spawn(connection(
                                        r,
                                        w,
                                        shared.clone(),
                                        cancel.clone(),
                                        peer.to_string(),
                                    ));
                                }
                                Err(e) => accept_error(e).await,
                            }
                        }
                    });
                }
            }
        }
        self.cancel.cancelled().await;
        tracing::info!("shutting down: finishing in-flight requests");
        tracker.close();
        // A client that stops reading could hold its connection open forever: give in-flight
        // requests a grace period, then go on (its tasks end with the process).
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "connections still busy after the grace period; closing anyway");
        }
        let flushed = self.shared.backend.flush();
        for p in &sockets {
            if let Err(e) = std::fs::remove_file(p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove socket file");
            }
        }
        flushed.map_err(|e| Error::Io(io::Error::other(e.to_string())))?;
        tracing::info!("NBD server stopped");
        Ok(())
    }
}

async fn accept_error(e: io::Error) {
    // EMFILE and friends: back off instead of spinning.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Outcome of option haggling.
enum Haggle {
    Transmit { structured: bool },
    Close(&'static str),
}

async fn connection<R, W>(
    r: R,
    mut w: W,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    peer: String,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    shared.metrics.connections_total.inc();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let outcome = tokio::select! {
        _ = cancel.cancelled() => Ok(Haggle::Close("server shutting down")),
        h = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut r, &mut w, &shared)) => {
            h.unwrap_or(Ok(Haggle::Close("handshake timeout")))
        }
    };
    match outcome {
        Ok(Haggle::Transmit { structured }) => {
            tracing::debug!(%peer, structured, "transmission phase");
            shared.metrics.connections.inc();
            transmit(r, w, shared.clone(), structured, cancel).await;
            shared.metrics.connections.dec();
        }
        Ok(Haggle::Close(why)) => {
            shared.metrics.handshake_failures.inc();
            tracing::debug!(%peer, why, "closed during handshake");
            let _ = w.shutdown().await;
        }
        Err(e) => {
            shared.metrics.handshake_failures.inc();
            tracing::debug!(%peer, error = %e, "handshake failed");
        }
    }
}

async fn option_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    kind: u32,
    payload: &[u8],
) -> io::Result<()> {
    // Payloads we build are at most a few KiB.
    let hdr = proto::option_reply_header(opt, kind, payload.len() as u32);
    write_all_vec(w, &mut [IoSlice::new(&hdr), IoSlice::new(payload)]).await
}

async fn handshake<R, W>(r: &mut R, w: &mut W, shared: &Shared) -> io::Result<Haggle>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut greet = [0u8; 18];
    greet[0..8].copy_from_slice(&proto::NBDMAGIC.to_be_bytes());
    greet[8..16].copy_from_slice(&proto::IHAVEOPT.to_be_bytes());
    greet[16..18]
        .copy_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greet).await?;
    let client_flags = r.read_u32().await?;
    if client_flags & !(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES) != 0 {
        return Ok(Haggle::Close("unknown client flags"));
    }
    let no_zeroes = client_flags & proto::FLAG_C_NO_ZEROES != 0;
    let mut structured = false;
    loop {
        let mut hdr = [0u8; 16];
        r.read_exact(&mut hdr).await?;
        if u64::from_be_bytes(hdr[0..8].try_into().map_err(io::Error::other)?) != proto::IHAVEOPT {
            return Ok(Haggle::Close("bad option magic"));
        }
        let opt = u32::from_be_bytes(hdr[8..12].try_into().map_err(io::Error::other)?);
        let len = u32::from_be_bytes(hdr[12..16].try_into().map_err(io::Error::other)?);
        if len > proto::MAX_OPTION_LEN {
            // Reading it would mean trusting the client with our memory; no legitimate option is this long.
            return Ok(Haggle::Close("option payload too long"));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        match opt {
            proto::OPT_EXPORT_NAME => {
                if data != shared.export_name.as_bytes() {
                    return Ok(Haggle::Close("unknown export (EXPORT_NAME)"));
                }
                let mut b = Vec::with_capacity(134);
                b.extend_from_slice(&shared.backend.size().to_be_bytes());
                b.extend_from_slice(&shared.transmission_flags(structured).to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&b).await?;
                return Ok(Haggle::Transmit { structured });
            }
            proto::OPT_ABORT => {
                // The client may already have gone: a failed ACK is fine.
                let _ = option_reply(w, opt, proto::REP_ACK, &[]).await;
                return Ok(Haggle::Close("client aborted"));
            }
            proto::OPT_LIST => {
                if !data.is_empty() {
                    option_reply(w, opt, proto::REP_ERR_INVALID, b"LIST takes no data").await?;
                    continue;
                }
                let name = shared.export_name.as_bytes();
                let mut p = Vec::with_capacity(4 + name.len());
                p.extend_from_slice(&(name.len() as u32).to_be_bytes());
                p.extend_from_slice(name);
                option_reply(w, opt, proto::REP_SERVER, &p).await?;
                option_reply(w, opt, proto::REP_ACK, &[]).await?;
            }
            proto::OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    option_reply(
                        w,
                        opt,
                        proto::REP_ERR_INVALID,
                        b"STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                    continue;
                }
                structured = true;
                option_reply(w, opt, proto::REP_ACK, &[]).await?;
            }
            proto::OPT_INFO | proto::OPT_GO => {
                let Some((name, infos)) = parse_info_request(&data) else {
                    option_reply(w, opt, proto::REP_ERR_INVALID, b"malformed INFO/GO request")
                        .await?;
                    continue;
                };
                if name != shared.export_name.as_bytes() {
                    option_reply(w, opt, proto::REP_ERR_UNKNOWN, b"no such export").await?;
                    continue;
                }
                let mut e = Vec::with_capacity(12);
                e.extend_from_slice(&proto::INFO_EXPORT.to_be_bytes());
                e.extend_from_slice(&shared.backend.size().to_be_bytes());
                e.extend_from_slice(&shared.transmission_flags(structured).to_be_bytes());
                option_reply(w, opt, proto::REP_INFO, &e).await?;
                // Always sent: any client may rely on our limits (a request above MAX_BLOCK is refused).
                let mut bs = Vec::with_capacity(14);
                bs.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
                bs.extend_from_slice(&1u32.to_be_bytes());
                bs.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
                bs.extend_from_slice(&MAX_BLOCK.to_be_bytes());
                option_reply(w, opt, proto::REP_INFO, &bs).await?;
                for info in infos {
                    let text = match info {
                        proto::INFO_NAME => shared.export_name.as_bytes(),
                        proto::INFO_DESCRIPTION => shared.description.as_bytes(),
                        _ => continue, // unknown or already sent: ignoring is what the protocol asks
                    };
                    let mut p = Vec::with_capacity(2 + text.len());
                    p.extend_from_slice(&info.to_be_bytes());
                    p.extend_from_slice(text);
                    option_reply(w, opt, proto::REP_INFO, &p).await?;
                }
                option_reply(w, opt, proto::REP_ACK, &[]).await?;
                if opt == proto::OPT_GO {
                    return Ok(Haggle::Transmit { structured });
                }
            }
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                if opt == proto::OPT_SET_META_CONTEXT && !structured {
                    option_reply(
                        w,
                        opt,
                        proto::REP_ERR_INVALID,
                        b"negotiate STRUCTURED_REPLY first",
                    )
                    .await?;
                } else if !valid_meta_request(&data) {
                    option_reply(
                        w,
                        opt,
                        proto::REP_ERR_INVALID,
                        b"malformed meta context request",
                    )
                    .await?;
                } else {
                    // No metadata contexts are offered (no BLOCK_STATUS): an empty list, then ACK.
                    option_reply(w, opt, proto::REP_ACK, &[]).await?;
                }
            }
            proto::OPT_STARTTLS => {
                option_reply(
                    w,
                    opt,
                    proto::REP_ERR_UNSUP,
                    b"TLS is not offered (local sockets only)",
                )
                .await?;
            }
            _ => {
                option_reply(w, opt, proto::REP_ERR_UNSUP, b"option not supported").await?;
            }
        }
    }
}

/// INFO/GO payload: u32 name length, name, u16 count, count × u16 info types.
fn parse_info_request(d: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let nlen = u32::from_be_bytes(d.get(0..4)?.try_into().ok()?) as usize;
    if nlen > proto::MAX_STRING_LEN {
        return None;
    }
    let name = d.get(4..4 + nlen)?;
    let rest = d.get(4 + nlen..)?;
    let n = u16::from_be_bytes(rest.get(0..2)?.try_into().ok()?) as usize;
    let list = rest.get(2..)?;
    if list.len() != n * 2 {
        return None;
    }
    Some((
        name,
        list.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    ))
}

/// LIST/SET_META_CONTEXT payload: u32 name length, name, u32 count, count × (u32 length, query).
fn valid_meta_request(d: &[u8]) -> bool {
    fn take_u32(d: &[u8], at: &mut usize) -> Option<usize> {
        let v = u32::from_be_bytes(d.get(*at..*at + 4)?.try_into().ok()?) as usize;
        *at += 4;
        Some(v)
    }
    let mut at = 0usize;
    let Some(nlen) = take_u32(d, &mut at) else {
        return false;
    };
    if nlen > proto::MAX_STRING_LEN || d.len() < at + nlen {
        return false;
    }
    at += nlen;
    let Some(n) = take_u32(d, &mut at) else {
        return false;
    };
    for _ in 0..n {
        let Some(qlen) = take_u32(d, &mut at) else {
            return false;
        };
        if qlen > proto::MAX_STRING_LEN || d.len() < at + qlen {
            return false;
        }
        at += qlen;
    }
    at == d.len()
}

/// Write every byte of `bufs`, as few syscalls as the socket allows.
async fn write_all_vec<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Check a request against the export and the protocol; `Err(errno)` is the reply.
fn validate(req: &Request, size: u64, structured: bool) -> Result<(), u32> {
    let allowed = match req.kind {
        proto::CMD_READ if structured => proto::CMD_FLAG_DF,
        proto::CMD_READ => 0,
        proto::CMD_WRITE | proto::CMD_TRIM => proto::CMD_FLAG_FUA,
        proto::CMD_WRITE_ZEROES => {
            proto::CMD_FLAG_FUA | proto::CMD_FLAG_NO_HOLE | proto::CMD_FLAG_FAST_ZERO
        }
        proto::CMD_FLUSH => 0,
        _ => return Err(proto::EINVAL),
    };
    if req.flags & !allowed != 0 {
        return Err(proto::EINVAL);
    }
    if req.kind == proto::CMD_FLUSH {
        return if req.offset == 0 && req.len == 0 {
            Ok(())
        } else {
            Err(proto::EINVAL)
        };
    }
    if req.len == 0 {
        return Err(proto::EINVAL);
    }
    if matches!(req.kind, proto::CMD_READ | proto::CMD_WRITE) && req.len > MAX_BLOCK {
        return Err(proto::EINVAL);
    }
    let in_range = req
        .offset
        .checked_add(req.len as u64)
        .is_some_and(|end| end <= size);
    if !in_range {
        // The protocol asks for ENOSPC on writes past the end, EINVAL for everything else.
        return Err(match req.kind {
            proto::CMD_WRITE | proto::CMD_WRITE_ZEROES => proto::ENOSPC,
            _ => proto::EINVAL,
        });
    }
    Ok(())
}

/// Per-connection handles on the hot metrics, so a successful request costs no label lookup.
struct ConnStats {
    shared: Arc<Shared>,
    ok: Vec<prometheus_client::metrics::counter::Counter>,
    latency: Vec<prometheus_client::metrics::histogram::Histogram>,
}

const KINDS: [u16; 6] = [
    proto::CMD_READ,
    proto::CMD_WRITE,
    proto::CMD_DISC,
    proto::CMD_FLUSH,
    proto::CMD_TRIM,
    proto::CMD_WRITE_ZEROES,
];

impl ConnStats {
    fn new(shared: Arc<Shared>) -> Self {
        let m = &shared.metrics;
        let ok = KINDS
            .iter()
            .map(|&k| {
                m.requests
                    .get_or_create(&ResultLabels {
                        op: proto::command_name(k),
                        error: "ok",
                    })
                    .clone()
            })
            .collect();
        let latency = KINDS
            .iter()
            .map(|&k| {
                m.latency
                    .get_or_create(&OpLabels {
                        op: proto::command_name(k),
                    })
                    .clone()
            })
            .collect();
        Self {
            shared,
            ok,
            latency,
        }
    }

    fn record(&self, req: &Request, err: u32, started: Instant) {
        let m = &self.shared.metrics;
        // Command codes 0..=6 with 5 (CACHE) unused: index by position in KINDS.
        let slot = KINDS.iter().position(|&k| k == req.kind);
        let secs = started.elapsed().as_secs_f64();
        match slot {
            Some(i) if err == 0 => self.ok[i].inc(),
            _ => m
                .requests
                .get_or_create(&ResultLabels {
                    op: proto::command_name(req.kind),
                    error: proto::error_name(err),
                })
                .inc(),
        };
        match slot {
            Some(i) => self.latency[i].observe(secs),
            None => m
                .latency
                .get_or_create(&OpLabels { op: "unknown" })
                .observe(secs),
        }
        if err == 0 {
            match req.kind {
                proto::CMD_READ => {
                    m.bytes_read.inc_by(req.len as u64);
                }
                proto::CMD_WRITE => {
                    m.bytes_written.inc_by(req.len as u64);
                }
                _ => {}
            }
        }
        if matches!(
            req.kind,
            proto::CMD_WRITE | proto::CMD_TRIM | proto::CMD_WRITE_ZEROES
        ) {
            m.allocated.set(self.shared.backend.allocated());
        }
    }
}

/// Run a store operation: inline for memory, on the blocking pool for device stores.
async fn run_op<T, F>(shared: &Arc<Shared>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Backend) -> Result<T, StoreError> + Send + 'static,
{
    if shared.backend.blocking() {
        let b = shared.backend.clone();
        tokio::task::spawn_blocking(move || f(&*b))
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("store operation panicked: {e}"))))
    } else {
        f(&*shared.backend)
    }
}

async fn transmit<R, W>(
    r: BufReader<R>,
    w: W,
    shared: Arc<Shared>,
    structured: bool,
    server_cancel: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    if shared.backend.blocking() || shared.concurrent {
        transmit_concurrent(r, w, shared, structured, server_cancel).await
    } else {
        transmit_inline(r, w, shared, structured, server_cancel).await
    }
}

/// Replies handed from a connection's reader to its writer at most (back-pressure).
const PIPE_DEPTH: usize = 256;
/// Replies written with one system call at most.
const WRITE_BATCH: usize = 64;
/// Writes at least this long are copied into the store by their own task.
const SPAWN_WRITE_MIN: usize = 64 * 1024;
/// Spare buffers kept for all connections together, in bytes.
const POOL_BYTES: usize = 256 << 20;

/// One reply on its way to the socket: a header and, for a successful READ, its data.
struct Outgoing {
    hdr: [u8; 28],
    hdr_len: usize,
    data: Option<(Vec<u8>, usize)>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Outgoing {
    fn status(structured: bool, req: &Request, err: u32) -> Self {
        let mut hdr = [0u8; 28];
        let hdr_len = if req.kind == proto::CMD_READ && structured && err != 0 {
            hdr[..20].copy_from_slice(&proto::structured_header(
                proto::REPLY_FLAG_DONE,
                proto::REPLY_TYPE_ERROR,
                req.cookie,
                6,
            ));
            hdr[20..24].copy_from_slice(&err.to_be_bytes());
            26 // error value + zero-length message
        } else {
            hdr[..16].copy_from_slice(&proto::simple_reply(err, req.cookie));
            16
        };
        Self {
            hdr,
            hdr_len,
            data: None,
            _permit: None,
        }
    }

    fn read_data(
        structured: bool,
        req: &Request,
        buf: Vec<u8>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        let mut hdr = [0u8; 28];
        let hdr_len = if structured {
            hdr[..20].copy_from_slice(&proto::structured_header(
                proto::REPLY_FLAG_DONE,
                proto::REPLY_TYPE_OFFSET_DATA,
                req.cookie,
                8 + req.len,
            ));
            hdr[20..28].copy_from_slice(&req.offset.to_be_bytes());
            28
        } else {
            hdr[..16].copy_from_slice(&proto::simple_reply(0, req.cookie));
            16
        };
        Self {
            hdr,
            hdr_len,
            data: Some((buf, req.len as usize)),
            _permit: permit,
        }
    }
}

/// Spare buffers and their total length (server-wide).
type ConnPool = Arc<Mutex<(Vec<Vec<u8>>, usize)>>;

fn pool_take(p: &ConnPool, len: usize) -> Vec<u8> {
    let popped = {
        let mut g = p.lock().unwrap_or_else(|e| e.into_inner());
        let b = g.0.pop();
        if let Some(b) = &b {
            g.1 -= b.len();
        }
        b
    };
    let mut b = popped.unwrap_or_default();
    if b.len() < len {
        b.resize(len, 0);
    }
    b
}

fn pool_give(p: &ConnPool, b: Vec<u8>) {
    let mut g = p.lock().unwrap_or_else(|e| e.into_inner());
    if b.len() <= POOL_MAX_LEN && g.1 + b.len() <= POOL_BYTES {
        g.1 += b.len();
        g.0.push(b);
    }
}

/// The writer half of a connection: drains replies in batches, one vectored write per batch.
async fn writer_task<W: AsyncWrite + Unpin>(
    mut rx: tokio::sync::mpsc::Receiver<Outgoing>,
    mut w: W,
    pool: ConnPool,
    cancel: CancellationToken,
) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
        for o in &batch {
            slices.push(IoSlice::new(&o.hdr[..o.hdr_len]));
            if let Some((d, n)) = &o.data {
                slices.push(IoSlice::new(&d[..*n]));
            }
        }
        let res = write_all_vec(&mut w, &mut slices).await;
        drop(slices);
        for o in batch.drain(..) {
            if let Some((d, _)) = o.data {
                pool_give(&pool, d);
            }
        }
        if let Err(e) = res {
            tracing::debug!(error = %e, "reply failed: closing connection");
            cancel.cancel();
            break;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Transmission for in-memory stores. The reader task parses each request and does the memory
/// copy at once (cheaper than handing it to another task); a writer task sends the replies,
/// many per system call, so copying the next request overlaps with sending the last one.
async fn transmit_inline<R, W>(
    mut r: BufReader<R>,
    w: W,
    shared: Arc<Shared>,
    structured: bool,
    server_cancel: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let size = shared.backend.size();
    let stats = Arc::new(ConnStats::new(shared.clone()));
    let cancel = server_cancel.child_token();
    let pool = shared.pool.clone();
    let budget = Arc::new(Semaphore::new(INFLIGHT_KIB as usize));
    let (tx, rx) = tokio::sync::mpsc::channel::<Outgoing>(PIPE_DEPTH);
    let writer = tokio::spawn(writer_task(rx, w, pool.clone(), cancel.clone()));
    loop {
        let mut hdr = [0u8; proto::REQUEST_LEN];
        let got = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = r.read_exact(&mut hdr) => r,
        };
        if got.is_err() {
            break;
        }
        let Some(req) = Request::parse(&hdr) else {
            tracing::debug!("bad request magic: closing connection");
            break;
        };
        let started = Instant::now();
        if req.kind == proto::CMD_DISC {
            break;
        }
        let len = req.len as usize;
        let verdict = validate(&req, size, structured);
        if req.kind == proto::CMD_WRITE {
            if verdict.is_ok() {
                let Ok(permit) = budget
                    .clone()
                    .acquire_many_owned((req.len / 1024).clamp(1, INFLIGHT_KIB))
                    .await
                else {
                    break;
                };
                let mut buf = pool_take(&pool, len);
                if r.read_exact(&mut buf[..len]).await.is_err() {
                    break;
                }
                if len >= SPAWN_WRITE_MIN {
                    // Copy into the store in another task while this one reads the next payload.
                    let (shared, stats, tx, pool) =
                        (shared.clone(), stats.clone(), tx.clone(), pool.clone());
                    tokio::spawn(async move {
                        let err = shared
                            .backend
                            .write(req.offset, &buf[..len])
                            .err()
                            .map_or(0, |e| e.nbd_errno());
                        pool_give(&pool, buf);
                        stats.record(&req, err, started);
                        let _ = tx.send(Outgoing::status(structured, &req, err)).await;
                        drop(permit);
                    });
                    continue;
                }
                let err = shared
                    .backend
                    .write(req.offset, &buf[..len])
                    .err()
                    .map_or(0, |e| e.nbd_errno());
                pool_give(&pool, buf);
                stats.record(&req, err, started);
                if tx
                    .send(Outgoing::status(structured, &req, err))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            } else if drain(&mut r, req.len as u64).await.is_err() {
                break;
            }
        }
        let b = &*shared.backend;
        let errno = |e: StoreError| e.nbd_errno();
        // Ok(Some) = READ data, Ok(None) = success without data, Err = NBD error value.
        let res = match verdict {
            Err(e) => Err(e),
            Ok(()) => match req.kind {
                proto::CMD_READ => {
                    let Ok(permit) = budget
                        .clone()
                        .acquire_many_owned((req.len / 1024).clamp(1, INFLIGHT_KIB))
                        .await
                    else {
                        break;
                    };
                    let mut buf = pool_take(&pool, len);
                    b.read(req.offset, &mut buf[..len])
                        .map(|()| Some((buf, permit)))
                        .map_err(errno)
                }
                proto::CMD_FLUSH => b.flush().map(|()| None).map_err(errno),
                proto::CMD_TRIM => b
                    .zero(req.offset, req.len as u64, true)
                    .map(|()| None)
                    .map_err(errno),
                proto::CMD_WRITE_ZEROES => {
                    // Zeroing is never slower than writing zeros, so FAST_ZERO is honoured by doing it.
                    let may_free = req.flags & proto::CMD_FLAG_NO_HOLE == 0;
                    b.zero(req.offset, req.len as u64, may_free)
                        .map(|()| None)
                        .map_err(errno)
                }
                _ => Err(proto::EINVAL),
            },
        };
        let (err, out) = match res {
            Ok(Some((buf, permit))) => {
                (0, Outgoing::read_data(structured, &req, buf, Some(permit)))
            }
            Ok(None) => (0, Outgoing::status(structured, &req, 0)),
            Err(e) => (e, Outgoing::status(structured, &req, e)),
        };
        stats.record(&req, err, started);
        if tx.send(out).await.is_err() {
            break;
        }
    }
    // DISC, EOF, shutdown or a broken stream: queued replies are still written, then the socket closes.
    drop(tx);
    let _ = writer.await;
}

/// Transmission for device stores: each request runs in its own task (device copies block, and
/// run on the blocking pool), so one connection keeps many copies in flight; replies go out in
/// completion order.
async fn transmit_concurrent<R, W>(
    mut r: BufReader<R>,
    w: W,
    shared: Arc<Shared>,
    structured: bool,
    server_cancel: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Stops this connection: server shutdown, or a reply that could not be written.
    let cancel = server_cancel.child_token();
    let budget = Arc::new(Semaphore::new(INFLIGHT_KIB as usize));
    let size = shared.backend.size();
    let stats = Arc::new(ConnStats::new(shared.clone()));
    let pool = shared.pool.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Outgoing>(PIPE_DEPTH);
    let writer = tokio::spawn(writer_task(rx, w, pool.clone(), cancel.clone()));
    loop {
        let mut hdr = [0u8; proto::REQUEST_LEN];
        let got = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = r.read_exact(&mut hdr) => r,
        };
        if got.is_err() {
            break; // client went away
        }
        let Some(req) = Request::parse(&hdr) else {
            tracing::debug!("bad request magic: closing connection");
            break;
        };
        let started = Instant::now();
        if req.kind == proto::CMD_DISC {
            break;
        }
        let verdict = validate(&req, size, structured);
        let kib = (req.len / 1024).clamp(1, INFLIGHT_KIB);
        let permit = match (verdict, req.kind) {
            (Ok(()), proto::CMD_READ | proto::CMD_WRITE) => {
                match budget.clone().acquire_many_owned(kib).await {
                    Ok(p) => Some(p),
                    Err(_) => break,
                }
            }
            _ => None,
        };
        let len = req.len as usize;
        let mut payload = None;
        if req.kind == proto::CMD_WRITE {
            // The payload follows the header whatever we think of the request: consume it to stay in sync.
            if verdict.is_ok() {
                let mut buf = pool_take(&pool, len);
                if r.read_exact(&mut buf[..len]).await.is_err() {
                    break;
                }
                payload = Some(buf);
            } else if drain(&mut r, req.len as u64).await.is_err() {
                break;
            }
        }
        if let Err(err) = verdict {
            stats.record(&req, err, started);
            if tx
                .send(Outgoing::status(structured, &req, err))
                .await
                .is_err()
            {
                break;
            }
            continue;
        }
        let (shared, stats, tx, pool) = (shared.clone(), stats.clone(), tx.clone(), pool.clone());
        tokio::spawn(async move {
            let errno = |e: StoreError| e.nbd_errno();
            // Ok(Some) = READ data, Ok(None) = success without data, Err = NBD error value.
            let res = match req.kind {
                proto::CMD_READ => {
                    let mut buf = pool_take(&pool, len);
                    run_op(&shared, move |b| {
                        b.read(req.offset, &mut buf[..len]).map(|()| buf)
                    })
                    .await
                    .map(Some)
                    .map_err(errno)
                }
                proto::CMD_WRITE => match payload {
                    Some(buf) => {
                        let r = run_op(&shared, move |b| {
                            b.write(req.offset, &buf[..len]).map(|()| buf)
                        })
                        .await;
                        r.map(|buf| {
                            pool_give(&pool, buf);
                            None
                        })
                        .map_err(errno)
                    }
                    None => Err(proto::EIO),
                },
                proto::CMD_FLUSH => run_op(&shared, |b| b.flush())
                    .await
                    .map(|()| None)
                    .map_err(errno),
                proto::CMD_TRIM => {
                    run_op(&shared, move |b| b.zero(req.offset, req.len as u64, true))
                        .await
                        .map(|()| None)
                        .map_err(errno)
                }
                proto::CMD_WRITE_ZEROES => {
                    // Zeroing is never slower than writing zeros in either store, so FAST_ZERO is
                    // honoured by doing it; NO_HOLE keeps the storage allocated.
                    let may_free = req.flags & proto::CMD_FLAG_NO_HOLE == 0;
                    run_op(&shared, move |b| {
                        b.zero(req.offset, req.len as u64, may_free)
                    })
                    .await
                    .map(|()| None)
                    .map_err(errno)
                }
                _ => Err(proto::EINVAL),
            };
            let (err, out) = match res {
                Ok(Some(buf)) => (0, Outgoing::read_data(structured, &req, buf, permit)),
                Ok(None) => (0, Outgoing::status(structured, &req, 0)),
                Err(e) => (e, Outgoing::status(structured, &req, e)),
            };
            stats.record(&req, err, started);
            // A closed channel means the connection is already going away.
            let _ = tx.send(out).await;
        });
    }
    // DISC, EOF, shutdown or a broken stream: the writer ends once every request task has sent
    // its reply (each holds a sender), then closes the socket.
    drop(tx);
    let _ = writer.await;
}

/// Read and discard `n` bytes without allocating for them.
async fn drain<R: AsyncRead + Unpin>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(n), &mut tokio::io::sink()).await?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: u16, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            kind,
            cookie: 1,
            offset,
            len,
        }
    }

    #[test]
    fn validation_picks_the_protocol_errors() {
        let size = 1 << 20;
        assert_eq!(
            validate(&req(proto::CMD_READ, 0, 0, 4096), size, false),
            Ok(())
        );
        assert_eq!(
            validate(&req(proto::CMD_READ, 0, size - 1, 2), size, false),
            Err(proto::EINVAL)
        );
        assert_eq!(
            validate(&req(proto::CMD_WRITE, 0, size - 1, 2), size, false),
            Err(proto::ENOSPC)
        );
        assert_eq!(
            validate(&req(proto::CMD_WRITE_ZEROES, 0, size, 1), size, false),
            Err(proto::ENOSPC)
        );
        assert_eq!(
            validate(&req(proto::CMD_TRIM, 0, u64::MAX, 4096), size, false),
            Err(proto::EINVAL)
        );
        assert_eq!(
            validate(&req(proto::CMD_READ, 0, 0, MAX_BLOCK + 1), u64::MAX, false),
            Err(proto::EINVAL)
        );
        assert_eq!(
            validate(
                &req(proto::CMD_READ, proto::CMD_FLAG_DF, 0, 512),
                size,
                false
            ),
            Err(proto::EINVAL)
        );
        assert_eq!(
            validate(
                &req(proto::CMD_READ, proto::CMD_FLAG_DF, 0, 512),
                size,
                true
            ),
            Ok(())
        );
        assert_eq!(
            validate(
                &req(proto::CMD_WRITE, proto::CMD_FLAG_NO_HOLE, 0, 512),
                size,
                false
            ),
            Err(proto::EINVAL)
        );
        assert_eq!(
            validate(&req(proto::CMD_FLUSH, 0, 0, 1), size, false),
            Err(proto::EINVAL)
        );
        assert_eq!(
            validate(&req(proto::CMD_FLUSH, 0, 0, 0), size, false),
            Ok(())
        );
        assert_eq!(
            validate(&req(proto::CMD_READ, 0, 0, 0), size, false),
            Err(proto::EINVAL)
        );
        assert_eq!(
            validate(&req(99, 0, 0, 512), size, false),
            Err(proto::EINVAL)
        );
        let fz = proto::CMD_FLAG_FAST_ZERO | proto::CMD_FLAG_NO_HOLE | proto::CMD_FLAG_FUA;
        assert_eq!(
            validate(&req(proto::CMD_WRITE_ZEROES, fz, 0, 512), size, false),
            Ok(())
        );
    }

    #[test]
    fn info_and_meta_parsers_reject_garbage() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
        let (name, infos) = parse_info_request(&d).expect("valid");
        assert_eq!(name, b"abc");
        assert_eq!(infos, vec![proto::INFO_BLOCK_SIZE]);
        assert!(parse_info_request(&d[..d.len() - 1]).is_none());
        assert!(parse_info_request(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_none());
        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&15u32.to_be_bytes());
        m.extend_from_slice(b"base:allocation");
        assert!(valid_meta_request(&m));
        assert!(!valid_meta_request(&m[..m.len() - 1]));
        m[7] = 2; // claims two queries, carries one
        assert!(!valid_meta_request(&m));
    }
}
