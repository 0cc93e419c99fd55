//! `cuGetProcAddress(_v2)`: maps (name, requested CUDA version) to the variant of the function
//! whose ABI that version expects (e.g. `cuMemAlloc` at 3020+ → `cuMemAlloc_v2`, `cuCtxCreate` at
//! 12050+ → `cuCtxCreate_v4`). Unknown names get a trampoline that logs the name once and returns
//! `CUDA_ERROR_NOT_SUPPORTED`.

#![allow(non_snake_case)]

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Mutex, OnceLock};

use tessera_idm::cu;

use crate::exports::{self as x, CUresult};

include!(concat!(env!("OUT_DIR"), "/unsupported_stubs.rs"));

/// (base name, CUDA version that introduced this variant, the variant).
fn table() -> &'static HashMap<&'static str, Vec<(i32, usize)>> {
    static T: OnceLock<HashMap<&'static str, Vec<(i32, usize)>>> = OnceLock::new();
    T.get_or_init(|| {
        let entries: Vec<(&'static str, i32, usize)> = vec![
            ("cuInit", 2000, x::cuInit as *const () as usize),
            (
                "cuDriverGetVersion",
                2020,
                x::cuDriverGetVersion as *const () as usize,
            ),
            ("cuDeviceGet", 2000, x::cuDeviceGet as *const () as usize),
            (
                "cuDeviceGetCount",
                2000,
                x::cuDeviceGetCount as *const () as usize,
            ),
            (
                "cuDeviceGetName",
                2000,
                x::cuDeviceGetName as *const () as usize,
            ),
            (
                "cuDeviceGetAttribute",
                2000,
                x::cuDeviceGetAttribute as *const () as usize,
            ),
            (
                "cuDeviceComputeCapability",
                2000,
                x::cuDeviceComputeCapability as *const () as usize,
            ),
            (
                "cuDeviceTotalMem",
                3020,
                x::cuDeviceTotalMem_v2 as *const () as usize,
            ),
            (
                "cuDeviceGetUuid",
                9020,
                x::cuDeviceGetUuid as *const () as usize,
            ),
            (
                "cuDeviceGetUuid",
                11040,
                x::cuDeviceGetUuid_v2 as *const () as usize,
            ),
            (
                "cuDevicePrimaryCtxRetain",
                7000,
                x::cuDevicePrimaryCtxRetain as *const () as usize,
            ),
            (
                "cuDevicePrimaryCtxRelease",
                7000,
                x::cuDevicePrimaryCtxRelease as *const () as usize,
            ),
            (
                "cuDevicePrimaryCtxRelease",
                11000,
                x::cuDevicePrimaryCtxRelease_v2 as *const () as usize,
            ),
            (
                "cuDevicePrimaryCtxGetState",
                7000,
                x::cuDevicePrimaryCtxGetState as *const () as usize,
            ),
            (
                "cuDevicePrimaryCtxSetFlags",
                11000,
                x::cuDevicePrimaryCtxSetFlags_v2 as *const () as usize,
            ),
            ("cuCtxCreate", 3020, x::cuCtxCreate_v2 as *const () as usize),
            (
                "cuCtxCreate",
                11040,
                x::cuCtxCreate_v3 as *const () as usize,
            ),
            (
                "cuCtxCreate",
                12050,
                x::cuCtxCreate_v4 as *const () as usize,
            ),
            (
                "cuCtxDestroy",
                4000,
                x::cuCtxDestroy_v2 as *const () as usize,
            ),
            (
                "cuCtxGetCurrent",
                4000,
                x::cuCtxGetCurrent as *const () as usize,
            ),
            (
                "cuCtxSetCurrent",
                4000,
                x::cuCtxSetCurrent as *const () as usize,
            ),
            (
                "cuCtxPushCurrent",
                4000,
                x::cuCtxPushCurrent_v2 as *const () as usize,
            ),
            (
                "cuCtxPopCurrent",
                4000,
                x::cuCtxPopCurrent_v2 as *const () as usize,
            ),
            (
                "cuCtxGetDevice",
                2000,
                x::cuCtxGetDevice as *const () as usize,
            ),
            (
                "cuCtxSynchronize",
                2000,
                x::cuCtxSynchronize as *const () as usize,
            ),
            ("cuMemAlloc", 3020, x::cuMemAlloc_v2 as *const () as usize),
            ("cuMemFree", 3020, x::cuMemFree_v2 as *const () as usize),
            (
                "cuMemGetInfo",
                3020,
                x::cuMemGetInfo_v2 as *const () as usize,
            ),
            (
                "cuMemcpyHtoD",
                3020,
                x::cuMemcpyHtoD_v2 as *const () as usize,
            ),
            (
                "cuMemcpyDtoH",
                3020,
                x::cuMemcpyDtoH_v2 as *const () as usize,
            ),
            (
                "cuMemcpyDtoD",
                3020,
                x::cuMemcpyDtoD_v2 as *const () as usize,
            ),
            (
                "cuMemcpyHtoDAsync",
                3020,
                x::cuMemcpyHtoDAsync_v2 as *const () as usize,
            ),
            (
                "cuMemcpyDtoHAsync",
                3020,
                x::cuMemcpyDtoHAsync_v2 as *const () as usize,
            ),
            (
                "cuMemcpyDtoDAsync",
                3020,
                x::cuMemcpyDtoDAsync_v2 as *const () as usize,
            ),
            ("cuMemsetD8", 3020, x::cuMemsetD8_v2 as *const () as usize),
            ("cuMemsetD32", 3020, x::cuMemsetD32_v2 as *const () as usize),
            (
                "cuMemsetD8Async",
                3020,
                x::cuMemsetD8Async as *const () as usize,
            ),
            (
                "cuMemsetD32Async",
                3020,
                x::cuMemsetD32Async as *const () as usize,
            ),
            (
                "cuModuleLoadData",
                2000,
                x::cuModuleLoadData as *const () as usize,
            ),
            (
                "cuModuleLoadDataEx",
                2010,
                x::cuModuleLoadDataEx as *const () as usize,
            ),
            (
                "cuModuleUnload",
                2000,
                x::cuModuleUnload as *const () as usize,
            ),
            (
                "cuModuleGetFunction",
                2000,
                x::cuModuleGetFunction as *const () as usize,
            ),
            (
                "cuModuleGetGlobal",
                3020,
                x::cuModuleGetGlobal_v2 as *const () as usize,
            ),
            (
                "cuFuncGetParamInfo",
                12040,
                x::cuFuncGetParamInfo as *const () as usize,
            ),
            (
                "cuLaunchKernel",
                4000,
                x::cuLaunchKernel as *const () as usize,
            ),
            (
                "cuStreamCreate",
                2000,
                x::cuStreamCreate as *const () as usize,
            ),
            (
                "cuStreamCreateWithPriority",
                5050,
                x::cuStreamCreateWithPriority as *const () as usize,
            ),
            (
                "cuStreamDestroy",
                4000,
                x::cuStreamDestroy_v2 as *const () as usize,
            ),
            (
                "cuStreamSynchronize",
                2000,
                x::cuStreamSynchronize as *const () as usize,
            ),
            (
                "cuStreamQuery",
                2000,
                x::cuStreamQuery as *const () as usize,
            ),
            (
                "cuStreamWaitEvent",
                3020,
                x::cuStreamWaitEvent as *const () as usize,
            ),
            (
                "cuEventCreate",
                2000,
                x::cuEventCreate as *const () as usize,
            ),
            (
                "cuEventDestroy",
                4000,
                x::cuEventDestroy_v2 as *const () as usize,
            ),
            (
                "cuEventRecord",
                2000,
                x::cuEventRecord as *const () as usize,
            ),
            (
                "cuEventRecordWithFlags",
                11010,
                x::cuEventRecordWithFlags as *const () as usize,
            ),
            (
                "cuEventSynchronize",
                2000,
                x::cuEventSynchronize as *const () as usize,
            ),
            ("cuEventQuery", 2000, x::cuEventQuery as *const () as usize),
            (
                "cuEventElapsedTime",
                2000,
                x::cuEventElapsedTime as *const () as usize,
            ),
            (
                "cuEventElapsedTime",
                12080,
                x::cuEventElapsedTime_v2 as *const () as usize,
            ),
            (
                "cuGetErrorString",
                6000,
                x::cuGetErrorString as *const () as usize,
            ),
            (
                "cuGetErrorName",
                6000,
                x::cuGetErrorName as *const () as usize,
            ),
            (
                "cuGetProcAddress",
                11030,
                cuGetProcAddress as *const () as usize,
            ),
            (
                "cuGetProcAddress",
                12000,
                cuGetProcAddress_v2 as *const () as usize,
            ),
        ];
        let mut m: HashMap<&'static str, Vec<(i32, usize)>> = HashMap::new();
        for (name, ver, f) in entries {
            m.entry(name).or_default().push((ver, f));
        }
        for v in m.values_mut() {
            v.sort_unstable();
        }
        m
    })
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(usize),
    /// Known, but every variant is newer than the requested version.
    VersionNotSufficient,
    /// Not implemented: a logging NOT_SUPPORTED trampoline.
    Unsupported(usize),
    /// Not implemented and the trampoline pool is exhausted.
    NotFound,
}

/// Resolves `name` for a client built against CUDA `version` (e.g. 12080 for 12.8).
pub fn lookup(name: &str, version: i32) -> Lookup {
    if let Some(vs) = table().get(name) {
        return match vs.iter().rev().find(|(v, _)| *v <= version) {
            Some((_, f)) => Lookup::Found(*f),
            None => Lookup::VersionNotSufficient,
        };
    }
    match slot_for(name) {
        Some(i) => Lookup::Unsupported(UNSUPPORTED[i] as *const () as usize),
        None => Lookup::NotFound,
    }
}

static SLOTS: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());

fn slot_for(name: &str) -> Option<usize> {
    let mut s = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = s.iter().position(|(n, _)| n == name) {
        return Some(i);
    }
    if s.len() >= UNSUPPORTED.len() {
        return None;
    }
    s.push((name.to_owned(), false));
    Some(s.len() - 1)
}

/// Called by trampoline `i`: logs its name the first time, returns NOT_SUPPORTED.
pub(crate) fn unsupported_hit(i: usize) -> u32 {
    let r = std::panic::catch_unwind(|| {
        let mut s = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((name, logged)) = s.get_mut(i)
            && !*logged
        {
            *logged = true;
            eprintln!(
                "tessera-libcuda: {name} is not supported by the GPU proxy (CUDA_ERROR_NOT_SUPPORTED)"
            );
        }
    });
    let _ = r;
    cu::NOT_SUPPORTED
}

/// For partially supported calls: logs `what` once, returns NOT_SUPPORTED.
pub(crate) fn unsupported_named(what: &str) -> u32 {
    if let Some(i) = slot_for(what) {
        return unsupported_hit(i);
    }
    cu::NOT_SUPPORTED
}

/// `CUdriverProcAddressQueryResult`.
const SYMBOL_SUCCESS: c_int = 0;
const SYMBOL_NOT_FOUND: c_int = 1;
const VERSION_NOT_SUFFICIENT: c_int = 2;

/// # Safety
/// `symbol` must be NUL-terminated; `pfn` and `status` (if non-null) must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    _flags: u64,
    status: *mut c_int,
) -> CUresult {
    let r = std::panic::catch_unwind(|| {
        if symbol.is_null() || pfn.is_null() {
            return cu::INVALID_VALUE;
        }
        // SAFETY: NUL-terminated symbol name per the API.
        let name = match unsafe { CStr::from_ptr(symbol) }.to_str() {
            Ok(n) => n,
            Err(_) => return cu::INVALID_VALUE,
        };
        let (ptr, st, code) = match lookup(name, version) {
            Lookup::Found(f) | Lookup::Unsupported(f) => (f, SYMBOL_SUCCESS, cu::SUCCESS),
            Lookup::VersionNotSufficient => (0, VERSION_NOT_SUFFICIENT, cu::NOT_FOUND),
            Lookup::NotFound => (0, SYMBOL_NOT_FOUND, cu::NOT_FOUND),
        };
        // SAFETY: out-pointers checked / optional per the API.
        unsafe {
            *pfn = ptr as *mut c_void;
            if !status.is_null() {
                *status = st;
            }
        }
        code
    });
    r.unwrap_or(cu::UNKNOWN)
}

/// # Safety
/// As [`cuGetProcAddress_v2`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: u64,
) -> CUresult {
    unsafe { cuGetProcAddress_v2(symbol, pfn, version, flags, std::ptr::null_mut()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_names_resolve_to_the_matching_variant() {
        assert_eq!(
            lookup("cuMemAlloc", 12000),
            Lookup::Found(x::cuMemAlloc_v2 as *const () as usize)
        );
        assert_eq!(lookup("cuMemAlloc", 2000), Lookup::VersionNotSufficient);
        assert_eq!(
            lookup("cuCtxCreate", 3020),
            Lookup::Found(x::cuCtxCreate_v2 as *const () as usize)
        );
        assert_eq!(
            lookup("cuCtxCreate", 12000),
            Lookup::Found(x::cuCtxCreate_v3 as *const () as usize)
        );
        assert_eq!(
            lookup("cuCtxCreate", 13000),
            Lookup::Found(x::cuCtxCreate_v4 as *const () as usize)
        );
        assert_eq!(
            lookup("cuEventElapsedTime", 12080),
            Lookup::Found(x::cuEventElapsedTime_v2 as *const () as usize)
        );
        assert_eq!(
            lookup("cuGetProcAddress", 12000),
            Lookup::Found(cuGetProcAddress_v2 as *const () as usize)
        );
        assert_eq!(
            lookup("cuDeviceGetUuid", 11040),
            Lookup::Found(x::cuDeviceGetUuid_v2 as *const () as usize)
        );
    }

    #[test]
    fn unknown_names_get_a_stable_not_supported_trampoline() {
        let a = lookup("cuGraphCreate", 10000);
        let b = lookup("cuGraphCreate", 12000);
        assert_eq!(a, b);
        let Lookup::Unsupported(f) = a else {
            panic!("{a:?}")
        };
        // SAFETY: the trampolines take no arguments and return a CUresult.
        let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(f) };
        assert_eq!(f(), cu::NOT_SUPPORTED);
        assert_ne!(lookup("cuGraphLaunch", 12000), a);
    }

    #[test]
    fn the_c_entry_point_reports_status() {
        let mut p: *mut c_void = std::ptr::null_mut();
        let mut st: c_int = -1;
        // SAFETY: valid name and out-pointers.
        let r = unsafe { cuGetProcAddress_v2(c"cuMemcpyHtoD".as_ptr(), &mut p, 12000, 0, &mut st) };
        assert_eq!((r, st), (cu::SUCCESS, SYMBOL_SUCCESS));
        assert_eq!(p as usize, x::cuMemcpyHtoD_v2 as *const () as usize);
        // SAFETY: as above.
        let r = unsafe { cuGetProcAddress_v2(c"cuMemAlloc".as_ptr(), &mut p, 1000, 0, &mut st) };
        assert_eq!((r, st), (cu::NOT_FOUND, VERSION_NOT_SUFFICIENT));
        assert!(p.is_null());
    }
}
