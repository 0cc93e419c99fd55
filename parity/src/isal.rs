//! ISA-L, the peer for bytes and speed, loaded with `dlopen` so `tessera-raid` runs where it is absent.
//!
//! The safe wrappers check ISA-L's documented constraints (pointer alignment, `len` a multiple of
//! 64 for `xor_gen`/`pq_gen`) and return an error instead of calling into undefined behaviour.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use crate::error::ParityError;
use crate::sys;

/// Message printed by tests and `bench` when the library is missing.
pub const NOT_FOUND: &str = "libisal.so.2 not found";

/// The one-line reason tests print when ISA-L cannot be used.
pub fn skip_reason(e: &ParityError) -> String {
    match e {
        ParityError::Isal(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Resolved ISA-L entry points. The library handle is never closed (lives for the process).
#[derive(Debug)]
pub struct Isal {
    xor_gen: sys::XorGenFn,
    pq_gen: sys::PqGenFn,
    ec_init_tables: sys::EcInitTablesFn,
    ec_encode_data: sys::EcEncodeDataFn,
    gf_gen_rs_matrix: sys::GfGenMatrixFn,
    gf_gen_cauchy1_matrix: sys::GfGenMatrixFn,
    gf_invert_matrix: sys::GfInvertMatrixFn,
}

const MAX_VECTS: usize = 258;

fn sym<T: Copy>(handle: *mut c_void, name: &std::ffi::CStr) -> Result<T, ParityError> {
    // SAFETY: handle is a live dlopen handle, name is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        return Err(ParityError::Isal(format!("symbol {name:?} missing")));
    }
    debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: T is one of the extern "C" fn pointer types of sys.rs, matching the C prototype.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

fn aligned(p: *const u8, a: usize) -> bool {
    (p as usize).is_multiple_of(a)
}

impl Isal {
    /// The process-wide ISA-L, loaded on first use. Errors with [`NOT_FOUND`] when absent.
    pub fn get() -> Result<&'static Isal, ParityError> {
        static LIB: OnceLock<Result<Isal, String>> = OnceLock::new();
        LIB.get_or_init(|| Isal::load().map_err(|e| skip_reason(&e)))
            .as_ref()
            .map_err(|e| ParityError::Isal(e.clone()))
    }

    fn load() -> Result<Isal, ParityError> {
        // TESSERA_ISAL_LIB names another build (a newer ISA-L, say); default: Debian's soname.
        let name = match std::env::var("TESSERA_ISAL_LIB") {
            Ok(p) => std::ffi::CString::new(p)
                .map_err(|_| ParityError::Isal("TESSERA_ISAL_LIB contains NUL".into()))?,
            Err(_) => sys::ISAL_SONAME.to_owned(),
        };
        // SAFETY: dlopen with a NUL-terminated name; ISA-L has no initialisers with side effects.
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            return Err(ParityError::Isal(NOT_FOUND.into()));
        }
        Ok(Isal {
            xor_gen: sym(h, c"xor_gen")?,
            pq_gen: sym(h, c"pq_gen")?,
            ec_init_tables: sym(h, c"ec_init_tables")?,
            ec_encode_data: sym(h, c"ec_encode_data")?,
            gf_gen_rs_matrix: sym(h, c"gf_gen_rs_matrix")?,
            gf_gen_cauchy1_matrix: sym(h, c"gf_gen_cauchy1_matrix")?,
            gf_invert_matrix: sym(h, c"gf_invert_matrix")?,
        })
    }

    fn vects(
        data: &[&[u8]],
        outs: &mut [&mut [u8]],
        align: usize,
    ) -> Result<([*mut c_void; MAX_VECTS], usize, usize), ParityError> {
        let n = data.len() + outs.len();
        if data.is_empty() || n > MAX_VECTS {
            return Err(ParityError::Isal(format!("{n} vectors")));
        }
        let len = outs[0].len();
        if !len.is_multiple_of(64) {
            return Err(ParityError::Isal(format!("len {len} not a multiple of 64")));
        }
        let mut a = [std::ptr::null_mut(); MAX_VECTS];
        for (i, d) in data.iter().enumerate() {
            if d.len() != len || !aligned(d.as_ptr(), align) {
                return Err(ParityError::Isal(format!(
                    "source {i}: length or alignment"
                )));
            }
            a[i] = d.as_ptr() as *mut c_void;
        }
        for (j, o) in outs.iter_mut().enumerate() {
            if o.len() != len || !aligned(o.as_ptr(), align) {
                return Err(ParityError::Isal(format!("dest {j}: length or alignment")));
            }
            a[data.len() + j] = o.as_mut_ptr().cast();
        }
        Ok((a, n, len))
    }

    /// `xor_gen`: parity = XOR of data (32-byte aligned, len a multiple of 64).
    pub fn xor_gen(&self, data: &[&[u8]], parity: &mut [u8]) -> Result<(), ParityError> {
        let (mut a, n, len) = Isal::vects(data, &mut [parity], 32)?;
        // SAFETY: n valid pointers of len bytes, checked above; ISA-L only reads sources.
        let rc = unsafe { (self.xor_gen)(n as c_int, len as c_int, a.as_mut_ptr()) };
        if rc != 0 {
            return Err(ParityError::Isal(format!("xor_gen returned {rc}")));
        }
        Ok(())
    }

    /// `pq_gen`: Linux raid6 P and Q (32-byte aligned, len a multiple of 64, at least 2 sources).
    pub fn pq_gen(&self, data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> Result<(), ParityError> {
        if data.len() < 2 {
            return Err(ParityError::Isal("pq_gen needs at least 2 sources".into()));
        }
        let (mut a, n, len) = Isal::vects(data, &mut [p, q], 32)?;
        // SAFETY: as xor_gen.
        let rc = unsafe { (self.pq_gen)(n as c_int, len as c_int, a.as_mut_ptr()) };
        if rc != 0 {
            return Err(ParityError::Isal(format!("pq_gen returned {rc}")));
        }
        Ok(())
    }

    /// `ec_init_tables` for a `rows x k` coefficient matrix: 32 bytes per coefficient.
    pub fn ec_init_tables(
        &self,
        k: usize,
        rows: usize,
        matrix: &[u8],
    ) -> Result<Vec<u8>, ParityError> {
        if matrix.len() != k * rows {
            return Err(ParityError::Isal("matrix shape".into()));
        }
        let mut a = matrix.to_vec();
        let mut t = vec![0u8; 32 * k * rows];
        // SAFETY: a holds k*rows bytes, t 32*k*rows, as ISA-L documents.
        unsafe { (self.ec_init_tables)(k as c_int, rows as c_int, a.as_mut_ptr(), t.as_mut_ptr()) };
        Ok(t)
    }

    /// `ec_encode_data` with tables from [`Isal::ec_init_tables`]; any length, any alignment.
    pub fn ec_encode_data(
        &self,
        tables: &[u8],
        data: &[&[u8]],
        coding: &mut [&mut [u8]],
    ) -> Result<(), ParityError> {
        let (k, rows) = (data.len(), coding.len());
        if tables.len() != 32 * k * rows || k == 0 || rows == 0 || k > MAX_VECTS || rows > MAX_VECTS
        {
            return Err(ParityError::Isal("table / shard shape".into()));
        }
        let len = data[0].len();
        let mut d = [std::ptr::null_mut::<u8>(); MAX_VECTS];
        let mut c = [std::ptr::null_mut::<u8>(); MAX_VECTS];
        for (i, s) in data.iter().enumerate() {
            if s.len() != len {
                return Err(ParityError::Isal(format!("source {i} length")));
            }
            d[i] = s.as_ptr() as *mut u8;
        }
        for (j, s) in coding.iter_mut().enumerate() {
            if s.len() != len {
                return Err(ParityError::Isal(format!("dest {j} length")));
            }
            c[j] = s.as_mut_ptr();
        }
        // SAFETY: k sources and rows destinations of len bytes; tables sized as ISA-L expects; ISA-L
        // reads but does not write gftbls and data.
        unsafe {
            (self.ec_encode_data)(
                len as c_int,
                k as c_int,
                rows as c_int,
                tables.as_ptr() as *mut u8,
                d.as_mut_ptr(),
                c.as_mut_ptr(),
            )
        };
        Ok(())
    }

    /// `gf_gen_rs_matrix(a, rows, k)`.
    pub fn gf_gen_rs_matrix(&self, rows: usize, k: usize) -> Vec<u8> {
        let mut a = vec![0u8; rows * k];
        // SAFETY: a holds rows*k bytes.
        unsafe { (self.gf_gen_rs_matrix)(a.as_mut_ptr(), rows as c_int, k as c_int) };
        a
    }

    /// `gf_gen_cauchy1_matrix(a, rows, k)`.
    pub fn gf_gen_cauchy1_matrix(&self, rows: usize, k: usize) -> Vec<u8> {
        let mut a = vec![0u8; rows * k];
        // SAFETY: a holds rows*k bytes.
        unsafe { (self.gf_gen_cauchy1_matrix)(a.as_mut_ptr(), rows as c_int, k as c_int) };
        a
    }

    /// `gf_invert_matrix` of an n x n matrix; `None` when singular.
    pub fn gf_invert_matrix(&self, m: &[u8], n: usize) -> Option<Vec<u8>> {
        let mut a = m.to_vec();
        let mut out = vec![0u8; n * n];
        if a.len() != n * n {
            return None;
        }
        // SAFETY: both buffers hold n*n bytes (ISA-L overwrites its input while pivoting).
        let rc = unsafe { (self.gf_invert_matrix)(a.as_mut_ptr(), out.as_mut_ptr(), n as c_int) };
        (rc == 0).then_some(out)
    }
}
