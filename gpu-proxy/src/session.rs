//! One tenant's session: validates every call against the tenant's own handles, allocations and
//! quota, then executes it through a [`CudaExecutor`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tessera_idm::frame::MAX_INLINE_CHUNK;
use tessera_idm::{Call, ParamInfo, Payload, Reply, Response, SharedArea, cu};
use tracing::{debug, info, warn};

use crate::alloc::{AllocMap, RangeKind};
use crate::executor::{CuResult, CudaExecutor};
use crate::handles::{HandleKind, HandleTable};
use crate::metrics::{Registry, TenantStats};
use crate::throttle::TokenBucket;

/// Limits of one tenant.
#[derive(Debug, Clone, Copy)]
pub struct TenantConfig {
    /// Device memory quota in bytes.
    pub memory_quota: u64,
    /// Fraction of kernel time, (0, 1]; 1 = no throttling.
    pub compute_share: f64,
    /// Physical device ordinal this tenant's device 0 maps to.
    pub device: i32,
}

/// Outstanding measured launches before the session waits for the oldest one.
const MAX_PENDING_TIMED: usize = 4;

pub struct Session {
    exec: Arc<dyn CudaExecutor>,
    registry: Arc<Registry>,
    pub tenant_id: u64,
    stats: Arc<TenantStats>,
    cfg: TenantConfig,
    /// The tenant's one real context (created on its first cuCtxCreate/primary retain).
    ctx: Option<u64>,
    /// Virtual contexts handed out (all map to `ctx`).
    ctx_handles: usize,
    primary: Option<(u64, u32)>,
    handles: HandleTable,
    allocs: AllocMap,
    /// Function handle → (module handle, parameter layout).
    layouts: HashMap<u64, (u64, Vec<ParamInfo>)>,
    bucket: TokenBucket,
    pending: VecDeque<(u64, u64)>,
    event_pool: Vec<u64>,
    clock: Instant,
    pinned_shm: Option<usize>,
}

type R = CuResult<Reply>;

impl Session {
    pub fn new(
        exec: Arc<dyn CudaExecutor>,
        registry: Arc<Registry>,
        label: String,
        cfg: TenantConfig,
    ) -> Self {
        let (tenant_id, stats) = registry.add_tenant(label.clone(), cfg.memory_quota);
        info!(tenant = tenant_id, identity = %label, quota = cfg.memory_quota, share = cfg.compute_share, "tenant connected");
        Self {
            exec,
            registry,
            tenant_id,
            stats,
            cfg,
            ctx: None,
            ctx_handles: 0,
            primary: None,
            handles: HandleTable::new(tenant_id ^ u64::from(std::process::id()) << 32),
            allocs: AllocMap::new(),
            layouts: HashMap::new(),
            bucket: TokenBucket::new(cfg.compute_share, 0.010, 0.0),
            pending: VecDeque::new(),
            event_pool: Vec::new(),
            clock: Instant::now(),
            pinned_shm: None,
        }
    }

    pub fn stats(&self) -> &TenantStats {
        &self.stats
    }

    /// Executes one call and builds its response.
    pub fn handle(&mut self, call: Call, shm: Option<&mut SharedArea>) -> Response {
        self.stats.calls_total.fetch_add(1, Relaxed);
        let name = call.name();
        match self.dispatch(call, shm) {
            Ok(reply) => Response::ok(reply),
            Err(code) => {
                self.stats.errors_total.fetch_add(1, Relaxed);
                debug!(tenant = self.tenant_id, call = name, code, "call failed");
                Response::err(if code == 0 { cu::UNKNOWN } else { code })
            }
        }
    }

    fn dev(&self, dev: i32) -> CuResult<i32> {
        if dev == 0 {
            Ok(self.cfg.device)
        } else {
            Err(cu::INVALID_DEVICE)
        }
    }

    fn need_ctx(&self) -> CuResult<()> {
        if self.ctx.is_some() && (self.ctx_handles > 0 || self.primary.is_some()) {
            Ok(())
        } else {
            Err(cu::INVALID_CONTEXT)
        }
    }

    fn real_ctx(&mut self) -> CuResult<u64> {
        if let Some(c) = self.ctx {
            return Ok(c);
        }
        let c = self.exec.ctx_create(self.cfg.device)?;
        self.exec.ctx_bind(c)?;
        self.ctx = Some(c);
        Ok(c)
    }

    fn get(&self, kind: HandleKind, h: u64) -> CuResult<u64> {
        self.handles.get(kind, h).ok_or_else(|| {
            self.stats.rejected_pointers_total.fetch_add(1, Relaxed);
            cu::INVALID_HANDLE
        })
    }

    fn stream(&self, h: u64) -> CuResult<u64> {
        if h == 0 {
            Ok(0)
        } else {
            self.get(HandleKind::Stream, h)
        }
    }

    fn check_range(&self, ptr: u64, len: u64) -> CuResult<()> {
        if self.allocs.contains(ptr, len) {
            Ok(())
        } else {
            self.stats.rejected_pointers_total.fetch_add(1, Relaxed);
            warn!(
                tenant = self.tenant_id,
                ptr = format_args!("{ptr:#x}"),
                len,
                "pointer outside the tenant's allocations"
            );
            Err(cu::INVALID_VALUE)
        }
    }

    fn maybe_pin(&mut self, shm: &SharedArea) {
        if self.pinned_shm.is_none() && self.ctx.is_some() {
            let ptr = shm.as_ptr();
            match self.exec.host_register(ptr, shm.len() as usize) {
                Ok(()) => self.pinned_shm = Some(ptr as usize),
                Err(code) => {
                    debug!(code, "could not pin the bulk area; copies stay pageable");
                    self.pinned_shm = Some(0);
                }
            }
        }
    }

    fn dispatch(&mut self, call: Call, shm: Option<&mut SharedArea>) -> R {
        let e = self.exec.clone();
        match call {
            Call::Ping | Call::Init { .. } => Ok(Reply::None),
            Call::DriverGetVersion => Ok(Reply::I32(e.driver_version()?)),
            // A tenant sees exactly one device, its share of the physical one.
            Call::DeviceGetCount => Ok(Reply::I32(1)),
            Call::DeviceGet { ordinal } => {
                self.dev(ordinal)?;
                Ok(Reply::I32(0))
            }
            Call::DeviceGetName { dev } => Ok(Reply::Name(e.device_name(self.dev(dev)?)?)),
            Call::DeviceGetAttribute { attrib, dev } => {
                Ok(Reply::I32(e.device_attribute(attrib, self.dev(dev)?)?))
            }
            Call::DeviceTotalMem { dev } => {
                let total = e.device_total_mem(self.dev(dev)?)?;
                Ok(Reply::U64(total.min(self.cfg.memory_quota)))
            }
            Call::DeviceGetUuid { dev } => Ok(Reply::Uuid(e.device_uuid(self.dev(dev)?)?)),
            Call::PrimaryCtxRetain { dev } => {
                self.dev(dev)?;
                let raw = self.real_ctx()?;
                let h = match self.primary {
                    Some((h, n)) => {
                        self.primary = Some((h, n + 1));
                        h
                    }
                    None => {
                        let h = self.handles.insert(HandleKind::Context, raw, 0);
                        self.primary = Some((h, 1));
                        h
                    }
                };
                Ok(Reply::Handle(h))
            }
            Call::PrimaryCtxRelease { dev } => {
                self.dev(dev)?;
                match self.primary {
                    Some((h, n)) if n > 0 => {
                        self.primary = Some((h, n - 1));
                        self.release_if_unreferenced();
                        Ok(Reply::None)
                    }
                    _ => Err(cu::INVALID_CONTEXT),
                }
            }
            Call::CtxCreate { dev, .. } => {
                self.dev(dev)?;
                let raw = self.real_ctx()?;
                self.ctx_handles += 1;
                Ok(Reply::Handle(self.handles.insert(
                    HandleKind::Context,
                    raw,
                    0,
                )))
            }
            Call::CtxDestroy { ctx } => {
                if self.primary.map(|p| p.0) == Some(ctx) {
                    return Err(cu::INVALID_CONTEXT);
                }
                self.handles
                    .remove(HandleKind::Context, ctx)
                    .ok_or(cu::INVALID_CONTEXT)?;
                self.ctx_handles -= 1;
                self.release_if_unreferenced();
                Ok(Reply::None)
            }
            Call::CtxSynchronize => {
                self.need_ctx()?;
                e.ctx_synchronize()?;
                Ok(Reply::None)
            }
            Call::MemAlloc { size } => {
                self.need_ctx()?;
                if size == 0 {
                    return Err(cu::INVALID_VALUE);
                }
                if self.allocs.allocated().saturating_add(size) > self.cfg.memory_quota {
                    info!(
                        tenant = self.tenant_id,
                        size,
                        used = self.allocs.allocated(),
                        quota = self.cfg.memory_quota,
                        "allocation over quota"
                    );
                    return Err(cu::OUT_OF_MEMORY);
                }
                let ptr = e.mem_alloc(size)?;
                // Scrub before the tenant can read it, and wait: a non-blocking stream would not
                // order after the null-stream memset.
                let scrub = e
                    .memset_d8(ptr, 0, size, 0)
                    .and_then(|()| e.stream_synchronize(0));
                if let Err(code) = scrub {
                    let _ = e.mem_free(ptr);
                    return Err(code);
                }
                self.allocs.insert(ptr, size, RangeKind::Allocation);
                self.registry
                    .global_ranges
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ptr, size, self.tenant_id);
                self.stats
                    .memory_bytes
                    .store(self.allocs.allocated(), Relaxed);
                self.stats.allocations.fetch_add(1, Relaxed);
                Ok(Reply::U64(ptr))
            }
            Call::MemFree { ptr } => {
                self.need_ctx()?;
                if self.allocs.remove_allocation(ptr).is_none() {
                    self.stats.rejected_pointers_total.fetch_add(1, Relaxed);
                    return Err(cu::INVALID_VALUE);
                }
                self.registry
                    .global_ranges
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(ptr);
                self.stats
                    .memory_bytes
                    .store(self.allocs.allocated(), Relaxed);
                self.stats.allocations.fetch_sub(1, Relaxed);
                e.mem_free(ptr)?;
                Ok(Reply::None)
            }
            Call::MemGetInfo => {
                self.need_ctx()?;
                let (free, total) = e.mem_get_info()?;
                let quota_free = self
                    .cfg
                    .memory_quota
                    .saturating_sub(self.allocs.allocated());
                Ok(Reply::MemInfo {
                    free: free.min(quota_free),
                    total: total.min(self.cfg.memory_quota),
                })
            }
            Call::MemcpyHtoD { dst, data, stream } => {
                self.need_ctx()?;
                let len = data.len();
                self.check_range(dst, len)?;
                let s = self.stream(stream)?;
                match data {
                    Payload::Inline(v) => e.memcpy_htod(dst, &v, s)?,
                    Payload::Shm { offset, len } => {
                        let area = shm.ok_or(cu::INVALID_VALUE)?;
                        self.maybe_pin(area);
                        let src = area.slice(offset, len).map_err(|_| cu::INVALID_VALUE)?;
                        e.memcpy_htod(dst, src, s)?;
                    }
                }
                self.stats.htod_bytes_total.fetch_add(len, Relaxed);
                Ok(Reply::None)
            }
            Call::MemcpyDtoH {
                src,
                len,
                to_shm,
                stream,
            } => {
                self.need_ctx()?;
                self.check_range(src, len)?;
                let s = self.stream(stream)?;
                let reply = match to_shm {
                    Some(offset) => {
                        let area = shm.ok_or(cu::INVALID_VALUE)?;
                        self.maybe_pin(area);
                        let dst = area.slice_mut(offset, len).map_err(|_| cu::INVALID_VALUE)?;
                        e.memcpy_dtoh(dst, src, s)?;
                        Payload::Shm { offset, len }
                    }
                    None => {
                        if len > MAX_INLINE_CHUNK as u64 {
                            return Err(cu::INVALID_VALUE);
                        }
                        let mut v = vec![0u8; len as usize];
                        e.memcpy_dtoh(&mut v, src, s)?;
                        Payload::Inline(v)
                    }
                };
                self.stats.dtoh_bytes_total.fetch_add(len, Relaxed);
                Ok(Reply::Data(reply))
            }
            Call::MemcpyDtoD {
                dst,
                src,
                len,
                stream,
            } => {
                self.need_ctx()?;
                self.check_range(dst, len)?;
                self.check_range(src, len)?;
                e.memcpy_dtod(dst, src, len, self.stream(stream)?)?;
                Ok(Reply::None)
            }
            Call::MemsetD8 {
                dst,
                value,
                count,
                stream,
            } => {
                self.need_ctx()?;
                self.check_range(dst, count)?;
                e.memset_d8(dst, value, count, self.stream(stream)?)?;
                Ok(Reply::None)
            }
            Call::MemsetD32 {
                dst,
                value,
                count,
                stream,
            } => {
                self.need_ctx()?;
                if dst % 4 != 0 {
                    return Err(cu::INVALID_VALUE);
                }
                self.check_range(dst, count.checked_mul(4).ok_or(cu::INVALID_VALUE)?)?;
                e.memset_d32(dst, value, count, self.stream(stream)?)?;
                Ok(Reply::None)
            }
            Call::ModuleLoadData { image } => {
                self.need_ctx()?;
                let m = e.module_load(&image)?;
                Ok(Reply::Handle(self.handles.insert(HandleKind::Module, m, 0)))
            }
            Call::ModuleUnload { module } => {
                self.need_ctx()?;
                let raw = self.get(HandleKind::Module, module)?;
                e.module_unload(raw)?;
                self.handles.remove(HandleKind::Module, module);
                self.handles.remove_children(module);
                self.allocs.remove_module(module);
                self.layouts.retain(|_, (m, _)| *m != module);
                Ok(Reply::None)
            }
            Call::ModuleGetFunction { module, name } => {
                self.need_ctx()?;
                let raw = self.get(HandleKind::Module, module)?;
                let (f, layout) = e.module_get_function(raw, &name)?;
                let h = self.handles.insert(HandleKind::Function, f, module);
                self.layouts.insert(h, (module, layout.clone()));
                Ok(Reply::Function {
                    handle: h,
                    params: layout,
                })
            }
            Call::ModuleGetGlobal { module, name } => {
                self.need_ctx()?;
                let raw = self.get(HandleKind::Module, module)?;
                let (ptr, size) = e.module_get_global(raw, &name)?;
                self.allocs
                    .insert(ptr, size, RangeKind::ModuleGlobal { module });
                Ok(Reply::Global { ptr, size })
            }
            Call::LaunchKernel {
                func,
                grid,
                block,
                shared_mem,
                stream,
                params,
            } => {
                self.need_ctx()?;
                let f = self.get(HandleKind::Function, func)?;
                let s = self.stream(stream)?;
                let layout = self
                    .layouts
                    .get(&func)
                    .map(|(_, l)| l.clone())
                    .ok_or(cu::INVALID_HANDLE)?;
                self.check_params(&params, &layout)?;
                let timed = self.before_launch(s)?;
                e.launch(f, grid, block, shared_mem, s, &params, &layout)?;
                if let Some((_, end)) = timed {
                    e.event_record(end, s)?;
                }
                if let Some(t) = timed {
                    self.pending.push_back(t);
                }
                self.stats.launches_total.fetch_add(1, Relaxed);
                Ok(Reply::None)
            }
            Call::StreamCreate { flags } => {
                self.need_ctx()?;
                let s = e.stream_create(flags)?;
                Ok(Reply::Handle(self.handles.insert(HandleKind::Stream, s, 0)))
            }
            Call::StreamDestroy { stream } => {
                self.need_ctx()?;
                let s = self.get(HandleKind::Stream, stream)?;
                e.stream_destroy(s)?;
                self.handles.remove(HandleKind::Stream, stream);
                Ok(Reply::None)
            }
            Call::StreamSynchronize { stream } => {
                self.need_ctx()?;
                e.stream_synchronize(self.stream(stream)?)?;
                Ok(Reply::None)
            }
            Call::StreamQuery { stream } => {
                self.need_ctx()?;
                e.stream_query(self.stream(stream)?)?;
                Ok(Reply::None)
            }
            Call::StreamWaitEvent {
                stream,
                event,
                flags,
            } => {
                self.need_ctx()?;
                let ev = self.get(HandleKind::Event, event)?;
                e.stream_wait_event(self.stream(stream)?, ev, flags)?;
                Ok(Reply::None)
            }
            Call::EventCreate { flags } => {
                self.need_ctx()?;
                let ev = e.event_create(flags)?;
                Ok(Reply::Handle(self.handles.insert(HandleKind::Event, ev, 0)))
            }
            Call::EventDestroy { event } => {
                self.need_ctx()?;
                let ev = self.get(HandleKind::Event, event)?;
                e.event_destroy(ev)?;
                self.handles.remove(HandleKind::Event, event);
                Ok(Reply::None)
            }
            Call::EventRecord { event, stream } => {
                self.need_ctx()?;
                let ev = self.get(HandleKind::Event, event)?;
                e.event_record(ev, self.stream(stream)?)?;
                Ok(Reply::None)
            }
            Call::EventSynchronize { event } => {
                self.need_ctx()?;
                e.event_synchronize(self.get(HandleKind::Event, event)?)?;
                Ok(Reply::None)
            }
            Call::EventQuery { event } => {
                self.need_ctx()?;
                e.event_query(self.get(HandleKind::Event, event)?)?;
                Ok(Reply::None)
            }
            Call::EventElapsedTime { start, end } => {
                self.need_ctx()?;
                let a = self.get(HandleKind::Event, start)?;
                let b = self.get(HandleKind::Event, end)?;
                Ok(Reply::F32(e.event_elapsed_ms(a, b)?))
            }
        }
    }

    /// The packed parameter buffer must match the layout, and no 8-byte argument may point into
    /// another tenant's memory. (Kernels can still compute addresses; the per-tenant context and
    /// the GPU MMU are what stop those. This catches handed-over pointers early with a clear error.)
    fn check_params(&self, params: &[u8], layout: &[ParamInfo]) -> CuResult<()> {
        let need = layout
            .iter()
            .map(|p| u64::from(p.offset) + u64::from(p.size))
            .max()
            .unwrap_or(0);
        if params.len() as u64 != need {
            return Err(cu::INVALID_VALUE);
        }
        let owners = self
            .registry
            .global_ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for p in layout.iter().filter(|p| p.size == 8) {
            let o = p.offset as usize;
            let mut b = [0u8; 8];
            b.copy_from_slice(&params[o..o + 8]);
            let v = u64::from_le_bytes(b);
            if let Some(owner) = owners.owner(v)
                && owner != self.tenant_id
            {
                self.stats.rejected_pointers_total.fetch_add(1, Relaxed);
                warn!(
                    tenant = self.tenant_id,
                    owner, "kernel argument points into another tenant's memory"
                );
                return Err(cu::INVALID_VALUE);
            }
        }
        Ok(())
    }

    fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    /// Accounts finished timed launches; with `block`, waits for the oldest.
    fn reap(&mut self, block: bool) -> CuResult<()> {
        let mut first = block;
        while let Some(&(s, e)) = self.pending.front() {
            if first {
                self.exec.event_synchronize(e)?;
                first = false;
            } else if self.exec.event_query(e).is_err() {
                break;
            }
            let ms = self.exec.event_elapsed_ms(s, e)?;
            let now = self.now();
            self.bucket.spend(f64::from(ms) / 1e3, now);
            self.stats
                .kernel_ns_total
                .fetch_add((f64::from(ms) * 1e6) as u64, Relaxed);
            self.pending.pop_front();
            self.event_pool.push(s);
            self.event_pool.push(e);
        }
        Ok(())
    }

    /// Compute share: waits while the bucket is in debt, then brackets the launch with events.
    fn before_launch(&mut self, stream: u64) -> CuResult<Option<(u64, u64)>> {
        if self.bucket.unlimited() {
            return Ok(None);
        }
        self.reap(self.pending.len() >= MAX_PENDING_TIMED)?;
        let wait = self.bucket.wait_before_launch(self.now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
            self.stats
                .throttle_ns_total
                .fetch_add(wait.as_nanos() as u64, Relaxed);
        }
        let mut ev = || match self.event_pool.pop() {
            Some(e) => Ok(e),
            None => self.exec.event_create(0),
        };
        let (s, e) = (ev()?, ev()?);
        self.exec.event_record(s, stream)?;
        Ok(Some((s, e)))
    }

    /// Frees every resource of the tenant and destroys its real context; returns the bytes freed.
    fn release_all(&mut self) -> u64 {
        let e = self.exec.clone();
        let mut freed = 0u64;
        if self.ctx.is_some() {
            let _ = e.ctx_synchronize();
            for (s, ev) in self.pending.drain(..) {
                self.event_pool.push(s);
                self.event_pool.push(ev);
            }
            for ev in self.event_pool.drain(..) {
                let _ = e.event_destroy(ev);
            }
            for ev in self.handles.drain(HandleKind::Event) {
                let _ = e.event_destroy(ev);
            }
            for s in self.handles.drain(HandleKind::Stream) {
                let _ = e.stream_destroy(s);
            }
            for m in self.handles.drain(HandleKind::Module) {
                let _ = e.module_unload(m);
            }
            let mut g = self
                .registry
                .global_ranges
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for p in self.allocs.allocations() {
                if let Some(sz) = self.allocs.remove_allocation(p) {
                    freed += sz;
                }
                g.remove(p);
                let _ = e.mem_free(p);
            }
            drop(g);
            if let Some(p) = self.pinned_shm.take().filter(|p| *p != 0) {
                let _ = e.host_unregister(p as *const u8);
            }
            if let Some(c) = self.ctx.take() {
                let _ = e.ctx_destroy(c);
            }
        }
        self.pinned_shm = None;
        self.handles.drain(HandleKind::Function);
        self.handles.drain(HandleKind::Context);
        self.layouts.clear();
        self.allocs = AllocMap::new();
        self.primary = None;
        self.ctx_handles = 0;
        self.stats.memory_bytes.store(0, Relaxed);
        self.stats.allocations.store(0, Relaxed);
        freed
    }

    /// Like the driver destroying a context: when the tenant's last context (created or primary
    /// with no references left) goes away, everything it held is freed.
    fn release_if_unreferenced(&mut self) {
        let primary_refs = self.primary.map(|p| p.1).unwrap_or(0);
        if self.ctx_handles == 0 && primary_refs == 0 && self.ctx.is_some() {
            let freed = self.release_all();
            info!(
                tenant = self.tenant_id,
                freed_bytes = freed,
                "last context destroyed; resources freed"
            );
        }
    }

    /// Frees everything the tenant still holds. Called on disconnect or crash.
    pub fn close(&mut self) {
        let freed = self.release_all();
        self.registry.tenant_gone(&self.stats);
        info!(
            tenant = self.tenant_id,
            freed_bytes = freed,
            "tenant disconnected; resources freed"
        );
    }
}
