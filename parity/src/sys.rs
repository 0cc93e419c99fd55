//! Raw C ABI of the ISA-L functions Tessera calls (signatures from `isa-l/raid.h` and
//! `isa-l/erasure_code.h` of libisal 2.30), resolved at run time with `dlsym`.

use std::ffi::{c_int, c_uchar, c_void};

pub type XorGenFn =
    unsafe extern "C" fn(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int;
pub type PqGenFn = unsafe extern "C" fn(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int;
pub type EcInitTablesFn =
    unsafe extern "C" fn(k: c_int, rows: c_int, a: *mut c_uchar, gftbls: *mut c_uchar);
pub type EcEncodeDataFn = unsafe extern "C" fn(
    len: c_int,
    k: c_int,
    rows: c_int,
    gftbls: *mut c_uchar,
    data: *mut *mut c_uchar,
    coding: *mut *mut c_uchar,
);
pub type GfGenMatrixFn = unsafe extern "C" fn(a: *mut c_uchar, m: c_int, k: c_int);
pub type GfInvertMatrixFn =
    unsafe extern "C" fn(input: *mut c_uchar, output: *mut c_uchar, n: c_int) -> c_int;

/// The soname Debian's `libisal2` package installs.
pub const ISAL_SONAME: &std::ffi::CStr = c"libisal.so.2";
