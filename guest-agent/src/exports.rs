//! The exported CUDA driver API. Every function catches panics (none may cross the C boundary),
//! checks its out-pointers, and forwards over IDM. Handles are the proxy's opaque values.

#![allow(non_snake_case, clippy::missing_safety_doc, clippy::too_many_arguments)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::sync::Mutex;

use tessera_idm::{Call, ParamInfo, Reply, cu};

use crate::conn::{copy_dtoh, copy_htod, rpc};
use crate::errors::describe;
use crate::image::image_len;

pub type CUresult = c_uint;
pub type CUdevice = c_int;
pub type CUdeviceptr = u64;
pub type Handle = *mut c_void;

/// Runs an export body: `Ok` → CUDA_SUCCESS, `Err(code)` → code, panic → CUDA_ERROR_UNKNOWN.
macro_rules! ffi {
    ($body:block) => {{
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), u32> {
            $body
        }));
        match r {
            Ok(Ok(())) => cu::SUCCESS,
            Ok(Err(code)) => code,
            Err(_) => cu::UNKNOWN,
        }
    }};
}

thread_local! {
    static CURRENT: Cell<u64> = const { Cell::new(0) };
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Function handle → parameter layout, as reported by the proxy (cuFuncGetParamInfo there).
static LAYOUTS: Mutex<Option<HashMap<u64, Vec<ParamInfo>>>> = Mutex::new(None);

fn layouts<T>(f: impl FnOnce(&mut HashMap<u64, Vec<ParamInfo>>) -> T) -> T {
    let mut g = LAYOUTS.lock().unwrap_or_else(|p| p.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

unsafe fn out<T>(p: *mut T, v: T) -> Result<(), u32> {
    if p.is_null() {
        return Err(cu::INVALID_VALUE);
    }
    // SAFETY: non-null out-pointer supplied by the caller per the API contract.
    unsafe { p.write(v) };
    Ok(())
}

fn h(p: Handle) -> u64 {
    p as usize as u64
}
fn hp(v: u64) -> Handle {
    v as usize as Handle
}
/// Streams: null, CU_STREAM_LEGACY (1) and CU_STREAM_PER_THREAD (2) all mean the tenant's null
/// stream at the proxy (proxy handles are 8-aligned and never that small).
fn st(s: Handle) -> u64 {
    let v = h(s);
    if v <= 2 { 0 } else { v }
}

fn i32_of(r: Reply) -> Result<i32, u32> {
    match r {
        Reply::I32(v) => Ok(v),
        _ => Err(cu::UNKNOWN),
    }
}
fn u64_of(r: Reply) -> Result<u64, u32> {
    match r {
        Reply::U64(v) | Reply::Handle(v) => Ok(v),
        _ => Err(cu::UNKNOWN),
    }
}

// ---- init, version, devices -------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    ffi!({ rpc(Call::Init { flags }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    ffi!({ unsafe { out(v, i32_of(rpc(Call::DriverGetVersion)?)?) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    ffi!({ unsafe { out(n, i32_of(rpc(Call::DeviceGetCount)?)?) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(d: *mut CUdevice, ordinal: c_int) -> CUresult {
    ffi!({ unsafe { out(d, i32_of(rpc(Call::DeviceGet { ordinal })?)?) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    ffi!({
        if name.is_null() || len <= 0 {
            return Err(cu::INVALID_VALUE);
        }
        let Reply::Name(s) = rpc(Call::DeviceGetName { dev })? else {
            return Err(cu::UNKNOWN);
        };
        let n = s.len().min(len as usize - 1);
        // SAFETY: the caller's buffer holds `len` bytes; we write n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), name.cast::<u8>(), n);
            *name.add(n) = 0;
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    v: *mut c_int,
    attrib: c_int,
    dev: CUdevice,
) -> CUresult {
    ffi!({ unsafe { out(v, i32_of(rpc(Call::DeviceGetAttribute { attrib, dev })?)?) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceComputeCapability(
    major: *mut c_int,
    minor: *mut c_int,
    dev: CUdevice,
) -> CUresult {
    ffi!({
        let a = i32_of(rpc(Call::DeviceGetAttribute { attrib: 75, dev })?)?;
        let b = i32_of(rpc(Call::DeviceGetAttribute { attrib: 76, dev })?)?;
        unsafe {
            out(major, a)?;
            out(minor, b)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    ffi!({ unsafe { out(bytes, u64_of(rpc(Call::DeviceTotalMem { dev })?)? as usize) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    ffi!({
        let Reply::Uuid(u) = rpc(Call::DeviceGetUuid { dev })? else {
            return Err(cu::UNKNOWN);
        };
        unsafe { out(uuid, u) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    unsafe { cuDeviceGetUuid_v2(uuid, dev) }
}

// ---- contexts ----------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    ffi!({ unsafe { out(pctx, hp(u64_of(rpc(Call::PrimaryCtxRetain { dev })?)?)) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    ffi!({ rpc(Call::PrimaryCtxRelease { dev }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    unsafe { cuDevicePrimaryCtxRelease_v2(dev) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut c_uint,
    active: *mut c_int,
) -> CUresult {
    ffi!({
        if dev != 0 {
            return Err(cu::INVALID_DEVICE);
        }
        unsafe {
            out(flags, 0)?;
            out(active, 0)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, _flags: c_uint) -> CUresult {
    // Scheduling flags are the proxy's choice; accepted and ignored.
    if dev == 0 {
        cu::SUCCESS
    } else {
        cu::INVALID_DEVICE
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(
    pctx: *mut Handle,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    ffi!({
        let c = u64_of(rpc(Call::CtxCreate { flags, dev })?)?;
        CURRENT.with(|x| x.set(c));
        unsafe { out(pctx, hp(c)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v3(
    pctx: *mut Handle,
    _params: *mut c_void,
    num: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    if num > 0 {
        return crate::procaddr::unsupported_named("cuCtxCreate_v3 (execution affinity)");
    }
    unsafe { cuCtxCreate_v2(pctx, flags, dev) }
}

/// `CUctxCreateParams`: execution affinity and CIG parameters; only empty ones are supported.
#[repr(C)]
pub struct CtxCreateParams {
    exec_affinity: *mut c_void,
    num_exec_affinity: c_int,
    cig: *mut c_void,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(
    pctx: *mut Handle,
    params: *mut CtxCreateParams,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    if !params.is_null() {
        // SAFETY: non-null params point to a CUctxCreateParams per the API.
        let p = unsafe { &*params };
        if p.num_exec_affinity > 0 || !p.cig.is_null() {
            return crate::procaddr::unsupported_named("cuCtxCreate_v4 (affinity/CIG parameters)");
        }
    }
    unsafe { cuCtxCreate_v2(pctx, flags, dev) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: Handle) -> CUresult {
    ffi!({
        rpc(Call::CtxDestroy { ctx: h(ctx) })?;
        CURRENT.with(|x| {
            if x.get() == h(ctx) {
                x.set(0)
            }
        });
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CUresult {
    ffi!({ unsafe { out(pctx, hp(CURRENT.with(Cell::get))) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    // Context handles are validated by the proxy on use; all of a tenant's contexts share one
    // real context there.
    CURRENT.with(|x| x.set(h(ctx)));
    cu::SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: Handle) -> CUresult {
    STACK.with(|s| s.borrow_mut().push(CURRENT.with(Cell::get)));
    CURRENT.with(|x| x.set(h(ctx)));
    cu::SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut Handle) -> CUresult {
    ffi!({
        let cur = CURRENT.with(Cell::get);
        if cur == 0 {
            return Err(cu::INVALID_CONTEXT);
        }
        let prev = STACK.with(|s| s.borrow_mut().pop()).unwrap_or(0);
        CURRENT.with(|x| x.set(prev));
        if !pctx.is_null() {
            unsafe { out(pctx, hp(cur))? };
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut CUdevice) -> CUresult {
    ffi!({
        if CURRENT.with(Cell::get) == 0 {
            return Err(cu::INVALID_CONTEXT);
        }
        unsafe { out(dev, 0) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    ffi!({ rpc(Call::CtxSynchronize).map(|_| ()) })
}

// ---- memory ------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) -> CUresult {
    ffi!({ unsafe { out(dptr, u64_of(rpc(Call::MemAlloc { size: size as u64 })?)?) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    ffi!({ rpc(Call::MemFree { ptr: dptr }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    ffi!({
        let Reply::MemInfo { free: f, total: t } = rpc(Call::MemGetInfo)? else {
            return Err(cu::UNKNOWN);
        };
        unsafe {
            out(free, f as usize)?;
            out(total, t as usize)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
) -> CUresult {
    unsafe { cuMemcpyHtoDAsync_v2(dst, src, n, std::ptr::null_mut()) }
}

/// Asynchronous copies complete before returning: the host buffer is read (or written) now,
/// through the bulk area. Stream order is kept; only the overlap with the host is lost.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    s: Handle,
) -> CUresult {
    ffi!({
        if n == 0 {
            return Ok(());
        }
        if src.is_null() {
            return Err(cu::INVALID_VALUE);
        }
        // SAFETY: the caller guarantees `src` holds `n` readable bytes.
        let data = unsafe { std::slice::from_raw_parts(src.cast::<u8>(), n) };
        copy_htod(dst, data, st(s))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, n: usize) -> CUresult {
    unsafe { cuMemcpyDtoHAsync_v2(dst, src, n, std::ptr::null_mut()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    ffi!({
        if n == 0 {
            return Ok(());
        }
        if dst.is_null() {
            return Err(cu::INVALID_VALUE);
        }
        // SAFETY: the caller guarantees `dst` holds `n` writable bytes.
        let buf = unsafe { std::slice::from_raw_parts_mut(dst.cast::<u8>(), n) };
        copy_dtoh(buf, src, st(s))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, n: usize) -> CUresult {
    unsafe { cuMemcpyDtoDAsync_v2(dst, src, n, std::ptr::null_mut()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    s: Handle,
) -> CUresult {
    ffi!({
        rpc(Call::MemcpyDtoD {
            dst,
            src,
            len: n as u64,
            stream: st(s),
        })
        .map(|_| ())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) -> CUresult {
    unsafe { cuMemsetD8Async(dst, v, n, std::ptr::null_mut()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, s: Handle) -> CUresult {
    ffi!({
        rpc(Call::MemsetD8 {
            dst,
            value: v,
            count: n as u64,
            stream: st(s),
        })
        .map(|_| ())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, v: c_uint, n: usize) -> CUresult {
    unsafe { cuMemsetD32Async(dst, v, n, std::ptr::null_mut()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst: CUdeviceptr,
    v: c_uint,
    n: usize,
    s: Handle,
) -> CUresult {
    ffi!({
        rpc(Call::MemsetD32 {
            dst,
            value: v,
            count: n as u64,
            stream: st(s),
        })
        .map(|_| ())
    })
}

// ---- modules and launches ----------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(m: *mut Handle, image: *const c_void) -> CUresult {
    ffi!({
        if m.is_null() || image.is_null() {
            return Err(cu::INVALID_VALUE);
        }
        // SAFETY: a valid image per the API; its length comes from its own headers.
        let bytes = unsafe {
            let n = image_len(image.cast());
            std::slice::from_raw_parts(image.cast::<u8>(), n).to_vec()
        };
        let hm = u64_of(rpc(Call::ModuleLoadData { image: bytes })?)?;
        unsafe { out(m, hp(hm)) }
    })
}

/// JIT options are not forwarded (the proxy uses the driver's defaults); log buffers stay empty.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    m: *mut Handle,
    image: *const c_void,
    _n: c_uint,
    _opts: *mut c_int,
    _vals: *mut *mut c_void,
) -> CUresult {
    unsafe { cuModuleLoadData(m, image) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleUnload(m: Handle) -> CUresult {
    ffi!({ rpc(Call::ModuleUnload { module: h(m) }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(
    f: *mut Handle,
    m: Handle,
    name: *const c_char,
) -> CUresult {
    ffi!({
        if f.is_null() || name.is_null() {
            return Err(cu::INVALID_VALUE);
        }
        // SAFETY: NUL-terminated name per the API.
        let name = unsafe { CStr::from_ptr(name) }
            .to_str()
            .map_err(|_| cu::INVALID_VALUE)?
            .to_owned();
        let Reply::Function { handle, params } =
            rpc(Call::ModuleGetFunction { module: h(m), name })?
        else {
            return Err(cu::UNKNOWN);
        };
        layouts(|l| l.insert(handle, params));
        unsafe { out(f, hp(handle)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetGlobal_v2(
    dptr: *mut CUdeviceptr,
    bytes: *mut usize,
    m: Handle,
    name: *const c_char,
) -> CUresult {
    ffi!({
        if name.is_null() {
            return Err(cu::INVALID_VALUE);
        }
        // SAFETY: NUL-terminated name per the API.
        let name = unsafe { CStr::from_ptr(name) }
            .to_str()
            .map_err(|_| cu::INVALID_VALUE)?
            .to_owned();
        let Reply::Global { ptr, size } = rpc(Call::ModuleGetGlobal { module: h(m), name })? else {
            return Err(cu::UNKNOWN);
        };
        // Either out-pointer may be NULL (the caller does not want it).
        unsafe {
            if !dptr.is_null() {
                dptr.write(ptr);
            }
            if !bytes.is_null() {
                bytes.write(size as usize);
            }
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncGetParamInfo(
    f: Handle,
    index: usize,
    offset: *mut usize,
    size: *mut usize,
) -> CUresult {
    ffi!({
        let p = layouts(|l| l.get(&h(f)).and_then(|v| v.get(index).copied()));
        let p = match p {
            Some(p) => p,
            None if layouts(|l| l.contains_key(&h(f))) => return Err(cu::INVALID_VALUE),
            None => return Err(cu::INVALID_HANDLE),
        };
        unsafe {
            if !offset.is_null() {
                offset.write(p.offset as usize);
            }
            if !size.is_null() {
                size.write(p.size as usize);
            }
        }
        Ok(())
    })
}

/// Packs kernel arguments by the function's layout: argument i is `size_i` bytes read from
/// `kernel_params[i]`, placed at `offset_i`.
///
/// # Safety
/// `kernel_params` must hold one valid pointer per parameter of `layout`.
pub unsafe fn marshal_params(
    layout: &[ParamInfo],
    kernel_params: *mut *mut c_void,
) -> Result<Vec<u8>, u32> {
    let size = layout
        .iter()
        .map(|p| (p.offset + p.size) as usize)
        .max()
        .unwrap_or(0);
    let mut buf = vec![0u8; size];
    if layout.is_empty() {
        return Ok(buf);
    }
    if kernel_params.is_null() {
        return Err(cu::INVALID_VALUE);
    }
    for (i, p) in layout.iter().enumerate() {
        // SAFETY: one pointer per parameter, each to `size` readable bytes (API contract).
        unsafe {
            let src = *kernel_params.add(i);
            if src.is_null() {
                return Err(cu::INVALID_VALUE);
            }
            std::ptr::copy_nonoverlapping(
                src.cast::<u8>(),
                buf.as_mut_ptr().add(p.offset as usize),
                p.size as usize,
            );
        }
    }
    Ok(buf)
}

/// The `extra` form: CU_LAUNCH_PARAM_BUFFER_POINTER (1) / CU_LAUNCH_PARAM_BUFFER_SIZE (2) / END (0).
unsafe fn extra_params(extra: *mut *mut c_void, want: usize) -> Result<Vec<u8>, u32> {
    let (mut ptr, mut size): (*const u8, usize) = (std::ptr::null(), 0);
    let mut i = 0;
    // SAFETY: `extra` is an END-terminated key/value array per the API.
    unsafe {
        loop {
            let key = *extra.add(i) as usize;
            match key {
                0 => break,
                1 => ptr = (*extra.add(i + 1)).cast::<u8>(),
                2 => size = *((*extra.add(i + 1)).cast::<usize>()),
                _ => return Err(cu::INVALID_VALUE),
            }
            i += 2;
        }
        if ptr.is_null() || size < want {
            return Err(cu::INVALID_VALUE);
        }
        Ok(std::slice::from_raw_parts(ptr, want).to_vec())
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    s: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    ffi!({
        let layout = layouts(|l| l.get(&h(f)).cloned()).ok_or(cu::INVALID_HANDLE)?;
        let params = if kernel_params.is_null() && !extra.is_null() {
            let want = layout
                .iter()
                .map(|p| (p.offset + p.size) as usize)
                .max()
                .unwrap_or(0);
            unsafe { extra_params(extra, want)? }
        } else {
            unsafe { marshal_params(&layout, kernel_params)? }
        };
        let call = Call::LaunchKernel {
            func: h(f),
            grid: [gx, gy, gz],
            block: [bx, by, bz],
            shared_mem: shared,
            stream: st(s),
            params,
        };
        if crate::conn::async_launch() {
            crate::conn::rpc_oneway(call)
        } else {
            rpc(call).map(|_| ())
        }
    })
}

// ---- streams and events ------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(ps: *mut Handle, flags: c_uint) -> CUresult {
    ffi!({ unsafe { out(ps, hp(u64_of(rpc(Call::StreamCreate { flags })?)?)) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    ps: *mut Handle,
    flags: c_uint,
    _prio: c_int,
) -> CUresult {
    unsafe { cuStreamCreate(ps, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy_v2(s: Handle) -> CUresult {
    ffi!({ rpc(Call::StreamDestroy { stream: h(s) }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(s: Handle) -> CUresult {
    ffi!({ rpc(Call::StreamSynchronize { stream: st(s) }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamQuery(s: Handle) -> CUresult {
    ffi!({ rpc(Call::StreamQuery { stream: st(s) }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamWaitEvent(s: Handle, e: Handle, flags: c_uint) -> CUresult {
    ffi!({
        rpc(Call::StreamWaitEvent {
            stream: st(s),
            event: h(e),
            flags,
        })
        .map(|_| ())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(pe: *mut Handle, flags: c_uint) -> CUresult {
    ffi!({ unsafe { out(pe, hp(u64_of(rpc(Call::EventCreate { flags })?)?)) } })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy_v2(e: Handle) -> CUresult {
    ffi!({ rpc(Call::EventDestroy { event: h(e) }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecord(e: Handle, s: Handle) -> CUresult {
    ffi!({
        rpc(Call::EventRecord {
            event: h(e),
            stream: st(s),
        })
        .map(|_| ())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecordWithFlags(e: Handle, s: Handle, _flags: c_uint) -> CUresult {
    unsafe { cuEventRecord(e, s) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(e: Handle) -> CUresult {
    ffi!({ rpc(Call::EventSynchronize { event: h(e) }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventQuery(e: Handle) -> CUresult {
    ffi!({ rpc(Call::EventQuery { event: h(e) }).map(|_| ()) })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    ffi!({
        let Reply::F32(v) = rpc(Call::EventElapsedTime {
            start: h(a),
            end: h(b),
        })?
        else {
            return Err(cu::UNKNOWN);
        };
        unsafe { out(ms, v) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    unsafe { cuEventElapsedTime(ms, a, b) }
}

// ---- errors ------------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(code: CUresult, s: *mut *const c_char) -> CUresult {
    ffi!({
        let (_, text) = describe(code).ok_or(cu::INVALID_VALUE)?;
        unsafe { out(s, text.as_ptr()) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(code: CUresult, s: *mut *const c_char) -> CUresult {
    ffi!({
        let (name, _) = describe(code).ok_or(cu::INVALID_VALUE)?;
        unsafe { out(s, name.as_ptr()) }
    })
}

// ---- per-thread default stream variants (same behaviour: see README) ----------------------

macro_rules! alias {
    ($($name:ident => $target:ident($($a:ident: $t:ty),*);)*) => {$(
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($a: $t),*) -> CUresult {
            unsafe { $target($($a),*) }
        }
    )*};
}

alias! {
    cuMemcpyHtoD_v2_ptds => cuMemcpyHtoD_v2(d: CUdeviceptr, s: *const c_void, n: usize);
    cuMemcpyDtoH_v2_ptds => cuMemcpyDtoH_v2(d: *mut c_void, s: CUdeviceptr, n: usize);
    cuMemcpyDtoD_v2_ptds => cuMemcpyDtoD_v2(d: CUdeviceptr, s: CUdeviceptr, n: usize);
    cuMemcpyHtoDAsync_v2_ptsz => cuMemcpyHtoDAsync_v2(d: CUdeviceptr, s: *const c_void, n: usize, st: Handle);
    cuMemcpyDtoHAsync_v2_ptsz => cuMemcpyDtoHAsync_v2(d: *mut c_void, s: CUdeviceptr, n: usize, st: Handle);
    cuMemcpyDtoDAsync_v2_ptsz => cuMemcpyDtoDAsync_v2(d: CUdeviceptr, s: CUdeviceptr, n: usize, st: Handle);
    cuMemsetD8_v2_ptds => cuMemsetD8_v2(d: CUdeviceptr, v: u8, n: usize);
    cuMemsetD32_v2_ptds => cuMemsetD32_v2(d: CUdeviceptr, v: c_uint, n: usize);
    cuMemsetD8Async_ptsz => cuMemsetD8Async(d: CUdeviceptr, v: u8, n: usize, st: Handle);
    cuMemsetD32Async_ptsz => cuMemsetD32Async(d: CUdeviceptr, v: c_uint, n: usize, st: Handle);
    cuLaunchKernel_ptsz => cuLaunchKernel(f: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, sh: c_uint, st: Handle, kp: *mut *mut c_void, ex: *mut *mut c_void);
    cuStreamSynchronize_ptsz => cuStreamSynchronize(s: Handle);
    cuStreamQuery_ptsz => cuStreamQuery(s: Handle);
    cuStreamWaitEvent_ptsz => cuStreamWaitEvent(s: Handle, e: Handle, f: c_uint);
    cuEventRecord_ptsz => cuEventRecord(e: Handle, s: Handle);
    cuEventRecordWithFlags_ptsz => cuEventRecordWithFlags(e: Handle, s: Handle, f: c_uint);
}

// ---- export tables -------------------------------------------------------------------------

/// Private driver interfaces (used by the CUDA runtime, and probed by NVRTC 13 through dlsym
/// without a NULL check, so the symbol must exist). Not forwardable: answers NOT_SUPPORTED with a
/// NULL table, logged once per interface UUID.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetExportTable(
    table: *mut *const c_void,
    id: *const [u8; 16],
) -> CUresult {
    ffi!({
        if !table.is_null() {
            // SAFETY: non-null out-pointer.
            unsafe { *table = std::ptr::null() };
        }
        let uuid = if id.is_null() {
            "null".to_owned()
        } else {
            // SAFETY: non-null pointer to a CUuuid per the API.
            unsafe { *id }
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        Err(crate::procaddr::unsupported_named(&format!(
            "cuGetExportTable({uuid})"
        )))
    })
}
