//! The stand-in driver API end to end: exported functions → IDM over a unix socket → proxy
//! session → test-double device. (On a GPU, `make gpu-test-vgpu` runs unmodified programs.)

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr::null_mut;
use std::sync::Arc;

use tessera_gpu_proxy::double::TestDouble;
use tessera_gpu_proxy::metrics::Registry;
use tessera_gpu_proxy::server::{Policy, accept_loop};
use tessera_gpu_proxy::session::TenantConfig;
use tessera_guest_agent::exports::*;
use tessera_guest_agent::procaddr::cuGetProcAddress_v2;
use tessera_idm::transport::unix::UnixListener;

const MIB: usize = 1 << 20;

fn ok(r: CUresult) {
    assert_eq!(r, 0, "CUresult {r}");
}

#[test]
fn driver_api_through_the_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idm.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let dev = Arc::new(TestDouble::new(256 * MIB as u64));
    let policy = Arc::new(Policy {
        default: TenantConfig {
            memory_quota: 64 * MIB as u64,
            compute_share: 1.0,
            device: 0,
        },
        by_uid: vec![],
    });
    let (d2, reg) = (dev.clone(), Registry::new());
    std::thread::spawn(move || accept_loop(Box::new(l), d2, reg, policy));
    // SAFETY: set before any other thread of this test process reads the environment.
    unsafe {
        std::env::set_var("TESSERA_IDM_SOCKET", &path);
        // A 1 MiB bulk area, so the 3 MiB copies below go through it in chunks.
        std::env::set_var("TESSERA_IDM_SHM_MB", "1");
    }

    // SAFETY: all calls below follow the CUDA driver API contracts with valid pointers.
    unsafe {
        ok(cuInit(0));
        let mut n: c_int = 0;
        ok(cuDeviceGetCount(&mut n));
        assert_eq!(n, 1);
        let mut d: CUdevice = -1;
        ok(cuDeviceGet(&mut d, 0));
        assert_eq!(cuDeviceGet(&mut d, 1), 101);
        let mut name = [0 as c_char; 64];
        ok(cuDeviceGetName(name.as_mut_ptr(), 64, 0));
        assert_eq!(
            CStr::from_ptr(name.as_ptr()).to_str().expect("utf8"),
            "Tessera test double"
        );
        let mut total = 0usize;
        ok(cuDeviceTotalMem_v2(&mut total, 0));
        assert_eq!(total, 64 * MIB, "the quota is the tenant's device memory");

        // No context yet.
        let mut p: CUdeviceptr = 0;
        assert_eq!(cuMemAlloc_v2(&mut p, 16), 201);
        let mut ctx: Handle = null_mut();
        ok(cuCtxCreate_v2(&mut ctx, 0, 0));
        let mut cur: Handle = null_mut();
        ok(cuCtxGetCurrent(&mut cur));
        assert_eq!(cur, ctx);

        // Copies larger than the bulk area, through it.
        let len = 3 * MIB + 123;
        ok(cuMemAlloc_v2(&mut p, len));
        let src: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        ok(cuMemcpyHtoD_v2(p, src.as_ptr().cast(), len));
        let mut back = vec![0u8; len];
        ok(cuMemcpyDtoH_v2(back.as_mut_ptr().cast(), p, len));
        assert!(back == src, "round trip through the bulk area");
        assert_eq!(cuMemAlloc_v2(&mut p, 100 * MIB), 2, "over quota");

        // Module, function layout, launch with a pointer and two scalars.
        let image = b"fn fill 8,4,4\n\0";
        let mut m: Handle = null_mut();
        ok(cuModuleLoadData(&mut m, image.as_ptr().cast()));
        let mut f: Handle = null_mut();
        ok(cuModuleGetFunction(&mut f, m, c"fill".as_ptr()));
        let (mut off, mut size) = (0usize, 0usize);
        ok(cuFuncGetParamInfo(f, 2, &mut off, &mut size));
        assert_eq!((off, size), (12, 4));
        assert_eq!(cuFuncGetParamInfo(f, 3, &mut off, &mut size), 1);
        let mut buf: CUdeviceptr = 0;
        ok(cuMemAlloc_v2(&mut buf, 1024));
        let mut s: Handle = null_mut();
        ok(cuStreamCreate(&mut s, 0));
        let (mut e0, mut e1): (Handle, Handle) = (null_mut(), null_mut());
        ok(cuEventCreate(&mut e0, 0));
        ok(cuEventCreate(&mut e1, 0));
        ok(cuEventRecord(e0, s));
        let (mut a0, mut a1, mut a2) = (buf, 0xabcd_0123u32, 256u32);
        let mut args: [*mut c_void; 3] = [
            (&raw mut a0).cast(),
            (&raw mut a1).cast(),
            (&raw mut a2).cast(),
        ];
        ok(cuLaunchKernel(
            f,
            1,
            1,
            1,
            256,
            1,
            1,
            0,
            s,
            args.as_mut_ptr(),
            null_mut(),
        ));
        ok(cuEventRecord(e1, s));
        ok(cuEventSynchronize(e1));
        let mut ms = 0f32;
        ok(cuEventElapsedTime(&mut ms, e0, e1));
        assert!(ms > 0.0);
        let mut out = vec![0u32; 256];
        ok(cuMemcpyDtoHAsync_v2(out.as_mut_ptr().cast(), buf, 1024, s));
        ok(cuStreamSynchronize(s));
        assert!(out.iter().all(|v| *v == 0xabcd_0123));
        let launches = dev.launches();
        let (fname, packed) = launches.last().expect("one launch");
        assert_eq!(fname, "fill");
        assert_eq!(&packed[..8], &buf.to_le_bytes());
        assert_eq!(&packed[8..12], &0xabcd_0123u32.to_le_bytes());

        // Memset, DtoD, memory info.
        ok(cuMemsetD32_v2(buf, 7, 256));
        ok(cuMemcpyDtoD_v2(p, buf, 1024));
        let mut first = [0u32; 4];
        ok(cuMemcpyDtoH_v2(first.as_mut_ptr().cast(), p, 16));
        assert_eq!(first, [7; 4]);
        let (mut free, mut tot) = (0usize, 0usize);
        ok(cuMemGetInfo_v2(&mut free, &mut tot));
        assert_eq!(tot, 64 * MIB);
        assert_eq!(free, 64 * MIB - (3 * MIB + 123) - 1024);

        // cuGetProcAddress_v2 as cuda-python uses it, and a logged unsupported call.
        let mut pfn: *mut c_void = null_mut();
        ok(cuGetProcAddress_v2(
            c"cuMemAlloc".as_ptr(),
            &mut pfn,
            3020,
            0,
            null_mut(),
        ));
        let alloc: unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult =
            std::mem::transmute(pfn);
        let mut q: CUdeviceptr = 0;
        ok(alloc(&mut q, 64));
        ok(cuGetProcAddress_v2(
            c"cuGraphCreate".as_ptr(),
            &mut pfn,
            12000,
            0,
            null_mut(),
        ));
        let graph: unsafe extern "C" fn(*mut Handle, u32) -> CUresult = std::mem::transmute(pfn);
        let mut g: Handle = null_mut();
        assert_eq!(graph(&mut g, 0), 801);

        let mut s_name: *const c_char = std::ptr::null();
        ok(cuGetErrorName(2, &mut s_name));
        assert_eq!(
            CStr::from_ptr(s_name).to_str().expect("utf8"),
            "CUDA_ERROR_OUT_OF_MEMORY"
        );
        assert_eq!(cuGetErrorString(123_456, &mut s_name), 1);
        // Bad arguments are errors, not crashes.
        assert_eq!(cuMemAlloc_v2(null_mut(), 16), 1);
        assert_eq!(
            cuLaunchKernel(
                null_mut(),
                1,
                1,
                1,
                1,
                1,
                1,
                0,
                null_mut(),
                null_mut(),
                null_mut()
            ),
            400
        );
        assert_eq!(
            cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, null_mut(), null_mut(), null_mut()),
            1
        );

        // Teardown.
        ok(cuEventDestroy_v2(e0));
        ok(cuEventDestroy_v2(e1));
        ok(cuStreamDestroy_v2(s));
        ok(cuModuleUnload(m));
        ok(cuMemFree_v2(buf));
        assert_eq!(cuMemFree_v2(buf), 1, "double free is refused");
        ok(cuCtxDestroy_v2(ctx));
    }
}
