//! Accept loops and the per-connection thread: handshake, then request → session → response
//! until the tenant leaves or breaks the protocol; then everything it held is freed.

use std::sync::Arc;

use tessera_idm::handshake::server_handshake;
use tessera_idm::msg::{PROTOCOL_MAX, PROTOCOL_MIN};
use tessera_idm::{Call, IdmError, Listener, Message, PeerIdentity, Reply, Response, Transport};
use tracing::{info, warn};

use crate::executor::CudaExecutor;
use crate::metrics::Registry;
use crate::session::{Session, TenantConfig};

/// Limits per tenant: a default plus overrides by unix uid (a Xen domid or vsock CID would key the
/// same table once those transports carry tenants).
#[derive(Debug, Clone)]
pub struct Policy {
    pub default: TenantConfig,
    pub by_uid: Vec<(u32, TenantConfig)>,
}

impl Policy {
    pub fn for_peer(&self, peer: &PeerIdentity) -> TenantConfig {
        if let PeerIdentity::Unix { uid, .. } = peer
            && let Some((_, c)) = self.by_uid.iter().find(|(u, _)| u == uid)
        {
            return *c;
        }
        self.default
    }
}

/// Serves one connection to the end. Returns the tenant id it had (if the handshake passed).
pub fn run_connection(
    mut t: Box<dyn Transport>,
    exec: Arc<dyn CudaExecutor>,
    registry: Arc<Registry>,
    policy: &Policy,
) -> Option<u64> {
    if let Err(e) = server_handshake(
        t.as_mut(),
        "tessera-gpu-proxy",
        (PROTOCOL_MIN, PROTOCOL_MAX),
    ) {
        warn!(peer = %t.peer().label(), error = %e, "handshake failed");
        return None;
    }
    let peer = t.peer().clone();
    let mut session = Session::new(exec, registry, peer.label(), policy.for_peer(&peer));
    let id = session.tenant_id;
    // First error of a one-way call (request id 0), reported by the next synchronising call.
    let mut deferred: Option<u32> = None;
    loop {
        let f = match t.recv() {
            Ok(f) => f,
            Err(IdmError::Closed) => break,
            Err(e) => {
                warn!(tenant = id, error = %e, "dropping tenant after a bad frame");
                break;
            }
        };
        let resp = match Message::from_frame(&f) {
            Ok(Message::Request(call)) if f.request_id == 0 => {
                let r = session.handle(call, t.shm());
                if r.result != 0 && deferred.is_none() {
                    deferred = Some(r.result);
                }
                continue;
            }
            Ok(Message::Request(call)) => {
                let syncs = is_sync_point(&call);
                let r = session.handle(call, t.shm());
                match deferred {
                    Some(code) if syncs && r.result == 0 => {
                        deferred = None;
                        Response::err(code)
                    }
                    _ => r,
                }
            }
            // The transport already mapped the area; acknowledge it.
            Ok(Message::ShmOffer(_)) => Response::ok(Reply::None),
            Ok(Message::Goodbye) => break,
            Ok(other) => {
                warn!(tenant = id, kind = ?other.kind(), "unexpected frame; closing");
                break;
            }
            Err(e) => {
                warn!(tenant = id, error = %e, "malformed message; closing");
                break;
            }
        };
        if let Err(e) = t.send(&Message::Response(resp).to_frame(f.request_id)) {
            warn!(tenant = id, error = %e, "send failed");
            break;
        }
    }
    session.close();
    Some(id)
}

/// Calls that report errors of earlier asynchronous work (like the driver does).
fn is_sync_point(call: &Call) -> bool {
    matches!(
        call,
        Call::CtxSynchronize
            | Call::StreamSynchronize { .. }
            | Call::StreamQuery { .. }
            | Call::EventSynchronize { .. }
            | Call::EventQuery { .. }
            | Call::MemcpyDtoH { .. }
    )
}

/// Accepts forever on `listener`, one thread per tenant.
pub fn accept_loop(
    listener: Box<dyn Listener>,
    exec: Arc<dyn CudaExecutor>,
    registry: Arc<Registry>,
    policy: Arc<Policy>,
) {
    info!(on = %listener.describe(), "listening");
    loop {
        match listener.accept() {
            Ok(t) => {
                let (exec, registry, policy) = (exec.clone(), registry.clone(), policy.clone());
                let spawned = std::thread::Builder::new()
                    .name("tenant".into())
                    .spawn(move || {
                        run_connection(t, exec, registry, &policy);
                    });
                if let Err(e) = spawned {
                    warn!(error = %e, "could not start a tenant thread");
                }
            }
            Err(e) => warn!(error = %e, "accept failed"),
        }
    }
}
