//! The process-wide connection to the GPU proxy, opened on first use.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tessera_idm::Transport;
use tessera_idm::frame::MAX_INLINE_CHUNK;
use tessera_idm::transport::unix::UnixTransport;
use tessera_idm::transport::{tcp, vsock};
use tessera_idm::{Call, Client, Payload, Reply, Response, cu, handshake::client_handshake};

/// Default bulk area: 64 MiB (env `TESSERA_IDM_SHM_MB` overrides).
const DEFAULT_SHM_MB: u64 = 64;
const DEFAULT_SOCKET: &str = "/run/tessera/idm.sock";

pub struct Conn {
    pub client: Client,
    pub shm_size: u64,
}

static CONN: OnceLock<Mutex<Option<Conn>>> = OnceLock::new();

fn log_once(msg: &str) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut s = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !s.iter().any(|m| m == msg) {
        eprintln!("tessera-libcuda: {msg}");
        s.push(msg.to_owned());
    }
}

pub fn socket_path() -> PathBuf {
    std::env::var_os("TESSERA_IDM_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Where the proxy is: `TESSERA_IDM_VSOCK=CID:PORT` (a guest VM), `TESSERA_IDM_TCP=HOST:PORT`
/// (a remote GPU), else the unix socket `TESSERA_IDM_SOCKET`. Only the unix socket has the memfd
/// bulk area; the others carry copies inline in 32 MiB frames.
fn open_transport() -> Result<(Box<dyn Transport>, String), String> {
    if let Ok(v) = std::env::var("TESSERA_IDM_VSOCK") {
        let (cid, port) = v
            .split_once(':')
            .and_then(|(c, p)| Some((c.parse::<u32>().ok()?, p.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("TESSERA_IDM_VSOCK={v:?} is not CID:PORT"))?;
        let t = vsock::connect(cid, port).map_err(|e| e.to_string())?;
        return Ok((Box::new(t), format!("vsock {cid}:{port}")));
    }
    if let Ok(v) = std::env::var("TESSERA_IDM_TCP") {
        let addr = v
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("TESSERA_IDM_TCP={v:?} is not HOST:PORT"))?;
        let t = tcp::connect(addr).map_err(|e| e.to_string())?;
        return Ok((Box::new(t), format!("tcp {addr}")));
    }
    let path = socket_path();
    let t = UnixTransport::connect(&path).map_err(|e| e.to_string())?;
    Ok((Box::new(t), format!("unix socket {}", path.display())))
}

fn connect() -> Result<Conn, u32> {
    let shm_mb = std::env::var("TESSERA_IDM_SHM_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| (1..=1024).contains(v))
        .unwrap_or(DEFAULT_SHM_MB);
    let (mut t, what) = open_transport().map_err(|e| {
        log_once(&format!(
            "cannot reach the GPU proxy ({e}); set TESSERA_IDM_SOCKET, TESSERA_IDM_VSOCK or TESSERA_IDM_TCP"
        ));
        cu::NO_DEVICE
    })?;
    let (_, tenant) = client_handshake(t.as_mut(), "tessera-libcuda").map_err(|e| {
        log_once(&format!(
            "handshake with the GPU proxy over {what} failed: {e}"
        ));
        cu::NO_DEVICE
    })?;
    let mut client = Client::new_after_handshake(t);
    client.tenant = tenant;
    let mut shm_size = 0;
    let ack = u64::MAX - 1;
    let offered = client
        .transport
        .as_any_mut()
        .downcast_mut::<UnixTransport>()
        .map(|u| u.offer_shm(shm_mb << 20, ack));
    if let Some(r) = offered {
        r.map_err(|e| {
            log_once(&format!("could not set up the bulk area: {e}"));
            cu::NO_DEVICE
        })?;
        let r = client.wait(ack).map_err(|_| cu::NO_DEVICE)?;
        if r.result != 0 {
            return Err(r.result);
        }
        shm_size = shm_mb << 20;
    }
    Ok(Conn { client, shm_size })
}

/// Runs `f` with the (lazily opened) connection, serialising callers.
pub fn with_conn<T>(f: impl FnOnce(&mut Conn) -> Result<T, u32>) -> Result<T, u32> {
    let m = CONN.get_or_init(|| Mutex::new(None));
    let mut g: MutexGuard<'_, Option<Conn>> = m.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        *g = Some(connect()?);
    }
    match g.as_mut() {
        Some(c) => f(c),
        None => Err(cu::NOT_INITIALIZED),
    }
}

/// Forwards one call; a lost connection is `CUDA_ERROR_UNKNOWN` (and is dropped so a later call
/// can reconnect as a new tenant).
pub fn rpc(call: Call) -> Result<Reply, u32> {
    let m = CONN.get_or_init(|| Mutex::new(None));
    let r = with_conn(|c| {
        c.client.call_owned(call).map_err(|e| {
            log_once(&format!("lost the GPU proxy: {e}"));
            cu::UNKNOWN
        })
    });
    match r {
        Ok(Response { result: 0, reply }) => Ok(reply),
        Ok(Response { result, .. }) => Err(result),
        Err(cu::UNKNOWN) => {
            *m.lock().unwrap_or_else(|p| p.into_inner()) = None;
            Err(cu::UNKNOWN)
        }
        Err(e) => Err(e),
    }
}

/// Launches are one-way unless `TESSERA_ASYNC_LAUNCH=0`: the call returns once the launch is
/// sent, and a launch error is reported by the next synchronising call (stream/event/context
/// synchronize or query, device-to-host copy), as the driver does for errors of running kernels.
pub fn async_launch() -> bool {
    static ASYNC: OnceLock<bool> = OnceLock::new();
    *ASYNC.get_or_init(|| {
        std::env::var("TESSERA_ASYNC_LAUNCH")
            .map(|v| v != "0")
            .unwrap_or(true)
    })
}

/// Sends a call without waiting for an answer.
pub fn rpc_oneway(call: Call) -> Result<(), u32> {
    with_conn(|c| {
        c.client.send_oneway(call).map_err(|e| {
            log_once(&format!("lost the GPU proxy: {e}"));
            cu::UNKNOWN
        })
    })
}

/// Copies with several threads for large buffers: one core cannot saturate memory bandwidth,
/// and this copy is the extra cost of forwarding.
fn par_copy(dst: &mut [u8], src: &[u8]) {
    const PAR_MIN: usize = 4 << 20;
    const THREADS: usize = 4;
    if dst.len() < PAR_MIN {
        dst.copy_from_slice(src);
        return;
    }
    let step = dst.len().div_ceil(THREADS);
    std::thread::scope(|s| {
        for (d, c) in dst.chunks_mut(step).zip(src.chunks(step)) {
            s.spawn(move || d.copy_from_slice(c));
        }
    });
}

fn check(r: tessera_idm::Result<Response>) -> Result<(), u32> {
    match r {
        Ok(Response { result: 0, .. }) => Ok(()),
        Ok(Response { result, .. }) => Err(result),
        Err(_) => Err(cu::UNKNOWN),
    }
}

/// Host → device through the bulk area. The area is split in two slots: while the proxy copies
/// one slot to the GPU, the next chunk is written into the other.
pub fn copy_htod(dst: u64, src: &[u8], stream: u64) -> Result<(), u32> {
    with_conn(|c| {
        if c.shm_size == 0 {
            for (i, part) in src.chunks(MAX_INLINE_CHUNK).enumerate() {
                let call = Call::MemcpyHtoD {
                    dst: dst + (i * MAX_INLINE_CHUNK) as u64,
                    data: Payload::Inline(part.to_vec()),
                    stream,
                };
                check(c.client.call_owned(call))?;
            }
            return Ok(());
        }
        let slot = (c.shm_size / 2).max(1) as usize;
        let mut inflight: Option<u64> = None;
        for (i, part) in src.chunks(slot).enumerate() {
            let off = ((i % 2) * slot) as u64;
            let area = c.client.transport.shm().ok_or(cu::NOT_INITIALIZED)?;
            par_copy(
                area.slice_mut(off, part.len() as u64)
                    .map_err(|_| cu::INVALID_VALUE)?,
                part,
            );
            if let Some(id) = inflight.take() {
                check(c.client.wait(id))?;
            }
            let call = Call::MemcpyHtoD {
                dst: dst + (i * slot) as u64,
                data: Payload::Shm {
                    offset: off,
                    len: part.len() as u64,
                },
                stream,
            };
            inflight = Some(c.client.send(call).map_err(|_| cu::UNKNOWN)?);
        }
        match inflight {
            Some(id) => check(c.client.wait(id)),
            None => Ok(()),
        }
    })
}

/// Device → host through the bulk area, two slots: the proxy fills one while we drain the other.
pub fn copy_dtoh(dst: &mut [u8], src: u64, stream: u64) -> Result<(), u32> {
    with_conn(|c| {
        if c.shm_size == 0 {
            for (i, part) in dst.chunks_mut(MAX_INLINE_CHUNK).enumerate() {
                let call = Call::MemcpyDtoH {
                    src: src + (i * MAX_INLINE_CHUNK) as u64,
                    len: part.len() as u64,
                    to_shm: None,
                    stream,
                };
                let r = c.client.call_owned(call).map_err(|_| cu::UNKNOWN)?;
                match r {
                    Response {
                        result: 0,
                        reply: Reply::Data(Payload::Inline(v)),
                    } if v.len() == part.len() => part.copy_from_slice(&v),
                    Response { result: 0, .. } => return Err(cu::UNKNOWN),
                    Response { result, .. } => return Err(result),
                }
            }
            return Ok(());
        }
        let slot = (c.shm_size / 2).max(1) as usize;
        let n = dst.len().div_ceil(slot);
        let req = |c: &mut Conn, i: usize, len: usize| {
            c.client
                .send(Call::MemcpyDtoH {
                    src: src + (i * slot) as u64,
                    len: len as u64,
                    to_shm: Some(((i % 2) * slot) as u64),
                    stream,
                })
                .map_err(|_| cu::UNKNOWN)
        };
        let lens: Vec<usize> = dst.chunks(slot).map(<[u8]>::len).collect();
        let mut next = if n > 0 {
            Some(req(c, 0, lens[0])?)
        } else {
            None
        };
        for (i, part) in dst.chunks_mut(slot).enumerate() {
            let id = next.take().ok_or(cu::UNKNOWN)?;
            check(c.client.wait(id))?;
            if i + 1 < n {
                next = Some(req(c, i + 1, lens[i + 1])?);
            }
            let area = c.client.transport.shm().ok_or(cu::NOT_INITIALIZED)?;
            let off = ((i % 2) * slot) as u64;
            par_copy(
                part,
                area.slice(off, part.len() as u64)
                    .map_err(|_| cu::INVALID_VALUE)?,
            );
        }
        Ok(())
    })
}
