//! The real executor: the CUDA driver through `cudarc::driver::sys`, loaded at run time, so the
//! crate builds and tests on machines without CUDA. [`CudaDriver::load`] fails cleanly there.

use std::ffi::{CString, c_int, c_void};
use std::ptr;

use cudarc::driver::sys;
use tessera_idm::{ParamInfo, cu};

use crate::error::{ProxyError, Result};
use crate::executor::{CuResult, CudaExecutor};

pub struct CudaDriver {
    /// `cuDeviceGetAttribute` with a plain int attribute: guests may ask for attributes newer than
    /// the bindings' enum, and an out-of-range enum value would be undefined behaviour.
    get_attribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> u32,
}

fn ck(r: sys::CUresult) -> CuResult<()> {
    match r as u32 {
        0 => Ok(()),
        code => Err(code),
    }
}

fn p<T>(v: u64) -> *mut T {
    v as usize as *mut T
}

fn u<T>(v: *mut T) -> u64 {
    v as usize as u64
}

impl CudaDriver {
    /// Loads libcuda, runs `cuInit(0)` and checks that device `dev` exists.
    pub fn load(dev: i32) -> Result<Self> {
        // SAFETY: probing for the library has no preconditions.
        if !unsafe { sys::is_culib_present() } {
            return Err(ProxyError::NoDriver(
                "libcuda.so could not be loaded (no NVIDIA driver on this host?)".into(),
            ));
        }
        // SAFETY: cuInit has no preconditions.
        ck(unsafe { sys::cuInit(0) }).map_err(|code| ProxyError::Cuda {
            call: "cuInit",
            code,
        })?;
        // SAFETY: the library is loaded (checked above); the symbol has this C signature in every
        // CUDA release since 2.0.
        let get_attribute = unsafe {
            let lib = sys::culib();
            let s = lib
                .get::<unsafe extern "C" fn(*mut c_int, c_int, c_int) -> u32>(
                    b"cuDeviceGetAttribute\0",
                )
                .map_err(|e| ProxyError::NoDriver(format!("cuDeviceGetAttribute: {e}")))?;
            *s
        };
        let d = Self { get_attribute };
        let n = d.device_count().map_err(|code| ProxyError::Cuda {
            call: "cuDeviceGetCount",
            code,
        })?;
        if dev < 0 || dev >= n {
            return Err(ProxyError::Config(format!(
                "device {dev} does not exist ({n} devices)"
            )));
        }
        Ok(d)
    }
}

impl CudaExecutor for CudaDriver {
    fn driver_version(&self) -> CuResult<i32> {
        let mut v = 0;
        // SAFETY: valid out pointer.
        ck(unsafe { sys::cuDriverGetVersion(&mut v) })?;
        Ok(v)
    }
    fn device_count(&self) -> CuResult<i32> {
        let mut n = 0;
        // SAFETY: valid out pointer.
        ck(unsafe { sys::cuDeviceGetCount(&mut n) })?;
        Ok(n)
    }
    fn device_name(&self, dev: i32) -> CuResult<String> {
        let mut buf = [0 as std::ffi::c_char; 256];
        // SAFETY: buffer length passed matches.
        ck(unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), 256, dev) })?;
        let bytes: Vec<u8> = buf
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn device_attribute(&self, attrib: i32, dev: i32) -> CuResult<i32> {
        let mut v = 0;
        // SAFETY: plain ints and a valid out pointer.
        match unsafe { (self.get_attribute)(&mut v, attrib, dev) } {
            0 => Ok(v),
            code => Err(code),
        }
    }
    fn device_total_mem(&self, dev: i32) -> CuResult<u64> {
        let mut v = 0usize;
        // SAFETY: valid out pointer.
        ck(unsafe { sys::cuDeviceTotalMem_v2(&mut v, dev) })?;
        Ok(v as u64)
    }
    fn device_uuid(&self, dev: i32) -> CuResult<[u8; 16]> {
        let mut id = sys::CUuuid { bytes: [0; 16] };
        // SAFETY: valid out pointer.
        ck(unsafe { sys::cuDeviceGetUuid_v2(&mut id, dev) })?;
        Ok(id.bytes.map(|b| b as u8))
    }
    fn ctx_create(&self, dev: i32) -> CuResult<u64> {
        let mut c = ptr::null_mut();
        // SAFETY: valid out pointer; flags 0 = automatic scheduling.
        ck(unsafe { sys::cuCtxCreate_v2(&mut c, 0, dev) })?;
        Ok(u(c))
    }
    fn ctx_destroy(&self, ctx: u64) -> CuResult<()> {
        // SAFETY: `ctx` came from ctx_create of this session.
        ck(unsafe { sys::cuCtxDestroy_v2(p(ctx)) })
    }
    fn ctx_bind(&self, ctx: u64) -> CuResult<()> {
        // SAFETY: `ctx` came from ctx_create.
        ck(unsafe { sys::cuCtxSetCurrent(p(ctx)) })
    }
    fn ctx_synchronize(&self) -> CuResult<()> {
        // SAFETY: no arguments.
        ck(unsafe { sys::cuCtxSynchronize() })
    }
    fn mem_alloc(&self, size: u64) -> CuResult<u64> {
        let mut d = 0;
        // SAFETY: valid out pointer.
        ck(unsafe { sys::cuMemAlloc_v2(&mut d, size as usize) })?;
        Ok(d)
    }
    fn mem_free(&self, ptr: u64) -> CuResult<()> {
        // SAFETY: the session only frees its own allocations.
        ck(unsafe { sys::cuMemFree_v2(ptr) })
    }
    fn mem_get_info(&self) -> CuResult<(u64, u64)> {
        let (mut f, mut t) = (0usize, 0usize);
        // SAFETY: valid out pointers.
        ck(unsafe { sys::cuMemGetInfo_v2(&mut f, &mut t) })?;
        Ok((f as u64, t as u64))
    }
    fn memcpy_htod(&self, dst: u64, src: &[u8], stream: u64) -> CuResult<()> {
        // SAFETY: `src` is valid for its length; the device range was checked by the session.
        unsafe {
            if stream == 0 {
                ck(sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()))
            } else {
                ck(sys::cuMemcpyHtoDAsync_v2(
                    dst,
                    src.as_ptr().cast(),
                    src.len(),
                    p(stream),
                ))?;
                // The host buffer goes away after this call.
                ck(sys::cuStreamSynchronize(p(stream)))
            }
        }
    }
    fn memcpy_dtoh(&self, dst: &mut [u8], src: u64, stream: u64) -> CuResult<()> {
        // SAFETY: `dst` is valid for writes of its length; device range checked by the session.
        unsafe {
            if stream == 0 {
                ck(sys::cuMemcpyDtoH_v2(
                    dst.as_mut_ptr().cast(),
                    src,
                    dst.len(),
                ))
            } else {
                ck(sys::cuMemcpyDtoHAsync_v2(
                    dst.as_mut_ptr().cast(),
                    src,
                    dst.len(),
                    p(stream),
                ))?;
                ck(sys::cuStreamSynchronize(p(stream)))
            }
        }
    }
    fn memcpy_dtod(&self, dst: u64, src: u64, len: u64, stream: u64) -> CuResult<()> {
        // SAFETY: ranges checked by the session.
        unsafe {
            if stream == 0 {
                ck(sys::cuMemcpyDtoD_v2(dst, src, len as usize))
            } else {
                ck(sys::cuMemcpyDtoDAsync_v2(dst, src, len as usize, p(stream)))
            }
        }
    }
    fn memset_d8(&self, dst: u64, value: u8, count: u64, stream: u64) -> CuResult<()> {
        // SAFETY: range checked by the session.
        unsafe {
            if stream == 0 {
                ck(sys::cuMemsetD8_v2(dst, value, count as usize))
            } else {
                ck(sys::cuMemsetD8Async(dst, value, count as usize, p(stream)))
            }
        }
    }
    fn memset_d32(&self, dst: u64, value: u32, count: u64, stream: u64) -> CuResult<()> {
        // SAFETY: range checked by the session.
        unsafe {
            if stream == 0 {
                ck(sys::cuMemsetD32_v2(dst, value, count as usize))
            } else {
                ck(sys::cuMemsetD32Async(dst, value, count as usize, p(stream)))
            }
        }
    }
    fn module_load(&self, image: &[u8]) -> CuResult<u64> {
        // PTX must be NUL-terminated; cubin/fatbin carry their own size. Append a NUL either way.
        let mut img = image.to_vec();
        img.push(0);
        let mut m = ptr::null_mut();
        // SAFETY: the image buffer outlives the call.
        ck(unsafe { sys::cuModuleLoadData(&mut m, img.as_ptr().cast()) })?;
        Ok(u(m))
    }
    fn module_unload(&self, module: u64) -> CuResult<()> {
        // SAFETY: handle from module_load.
        ck(unsafe { sys::cuModuleUnload(p(module)) })
    }
    fn module_get_function(&self, module: u64, name: &str) -> CuResult<(u64, Vec<ParamInfo>)> {
        let n = CString::new(name).map_err(|_| cu::INVALID_VALUE)?;
        let mut f = ptr::null_mut();
        // SAFETY: valid out pointer and C string.
        ck(unsafe { sys::cuModuleGetFunction(&mut f, p(module), n.as_ptr()) })?;
        let mut layout = Vec::new();
        for i in 0..4096usize {
            let (mut off, mut size) = (0usize, 0usize);
            // SAFETY: valid out pointers; an index past the last parameter returns an error.
            let r = unsafe { sys::cuFuncGetParamInfo(f, i, &mut off, &mut size) } as u32;
            if r != 0 {
                break;
            }
            layout.push(ParamInfo {
                offset: off as u32,
                size: size as u32,
            });
        }
        Ok((u(f), layout))
    }
    fn module_get_global(&self, module: u64, name: &str) -> CuResult<(u64, u64)> {
        let n = CString::new(name).map_err(|_| cu::INVALID_VALUE)?;
        let (mut d, mut s) = (0, 0usize);
        // SAFETY: valid out pointers and C string.
        ck(unsafe { sys::cuModuleGetGlobal_v2(&mut d, &mut s, p(module), n.as_ptr()) })?;
        Ok((d, s as u64))
    }
    fn launch(
        &self,
        func: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        stream: u64,
        params: &[u8],
        layout: &[ParamInfo],
    ) -> CuResult<()> {
        // The driver copies the argument values at launch time, so pointers into `buf` suffice.
        // Copy into an 8-aligned buffer so each argument is naturally aligned.
        let mut buf = vec![0u64; params.len().div_ceil(8)];
        // SAFETY: `buf` has at least params.len() bytes.
        unsafe {
            ptr::copy_nonoverlapping(params.as_ptr(), buf.as_mut_ptr().cast::<u8>(), params.len())
        };
        let base = buf.as_mut_ptr().cast::<u8>();
        let mut args: Vec<*mut c_void> = layout
            .iter()
            // SAFETY: offsets were checked against params.len() by the session.
            .map(|pi| unsafe { base.add(pi.offset as usize) }.cast())
            .collect();
        // SAFETY: function handle from module_get_function, argument array matches its layout.
        ck(unsafe {
            sys::cuLaunchKernel(
                p(func),
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                shared_mem,
                p(stream),
                args.as_mut_ptr(),
                ptr::null_mut(),
            )
        })
    }
    fn stream_create(&self, flags: u32) -> CuResult<u64> {
        let mut s = ptr::null_mut();
        // SAFETY: valid out pointer.
        ck(unsafe { sys::cuStreamCreate(&mut s, flags) })?;
        Ok(u(s))
    }
    fn stream_destroy(&self, stream: u64) -> CuResult<()> {
        // SAFETY: handle from stream_create.
        ck(unsafe { sys::cuStreamDestroy_v2(p(stream)) })
    }
    fn stream_synchronize(&self, stream: u64) -> CuResult<()> {
        // SAFETY: handle from stream_create or the null stream.
        ck(unsafe { sys::cuStreamSynchronize(p(stream)) })
    }
    fn stream_query(&self, stream: u64) -> CuResult<()> {
        // SAFETY: as above.
        ck(unsafe { sys::cuStreamQuery(p(stream)) })
    }
    fn stream_wait_event(&self, stream: u64, event: u64, flags: u32) -> CuResult<()> {
        // SAFETY: handles from this session.
        ck(unsafe { sys::cuStreamWaitEvent(p(stream), p(event), flags) })
    }
    fn event_create(&self, flags: u32) -> CuResult<u64> {
        let mut e = ptr::null_mut();
        // SAFETY: valid out pointer.
        ck(unsafe { sys::cuEventCreate(&mut e, flags) })?;
        Ok(u(e))
    }
    fn event_destroy(&self, event: u64) -> CuResult<()> {
        // SAFETY: handle from event_create.
        ck(unsafe { sys::cuEventDestroy_v2(p(event)) })
    }
    fn event_record(&self, event: u64, stream: u64) -> CuResult<()> {
        // SAFETY: handles from this session.
        ck(unsafe { sys::cuEventRecord(p(event), p(stream)) })
    }
    fn event_synchronize(&self, event: u64) -> CuResult<()> {
        // SAFETY: handle from event_create.
        ck(unsafe { sys::cuEventSynchronize(p(event)) })
    }
    fn event_query(&self, event: u64) -> CuResult<()> {
        // SAFETY: handle from event_create.
        ck(unsafe { sys::cuEventQuery(p(event)) })
    }
    fn event_elapsed_ms(&self, start: u64, end: u64) -> CuResult<f32> {
        let mut ms = 0f32;
        // SAFETY: valid out pointer and handles.
        ck(unsafe { sys::cuEventElapsedTime(&mut ms, p(start), p(end)) })?;
        Ok(ms)
    }
    fn host_register(&self, ptr: *const u8, len: usize) -> CuResult<()> {
        // SAFETY: the range is a live mapping owned by the connection; unregistered before unmap.
        ck(unsafe { sys::cuMemHostRegister_v2(ptr as *mut c_void, len, 0) })
    }
    fn host_unregister(&self, ptr: *const u8) -> CuResult<()> {
        // SAFETY: registered by host_register.
        ck(unsafe { sys::cuMemHostUnregister(ptr as *mut c_void) })
    }
}
