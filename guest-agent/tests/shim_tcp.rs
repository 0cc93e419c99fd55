//! The stand-in over TCP (no bulk area: copies travel inline, chunked at 32 MiB), as used for a
//! remote GPU or, with vsock, from a guest VM.

use std::ptr::null_mut;
use std::sync::Arc;

use tessera_gpu_proxy::double::TestDouble;
use tessera_gpu_proxy::metrics::Registry;
use tessera_gpu_proxy::server::{Policy, accept_loop};
use tessera_gpu_proxy::session::TenantConfig;
use tessera_guest_agent::exports::*;
use tessera_idm::transport::tcp::TcpListener;

#[test]
fn copies_over_tcp_and_primary_context_release() {
    let l = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = l.local_addr().expect("addr");
    let dev = Arc::new(TestDouble::new(256 << 20));
    let policy = Arc::new(Policy {
        default: TenantConfig {
            memory_quota: 128 << 20,
            compute_share: 1.0,
            device: 0,
        },
        by_uid: vec![],
    });
    let d2 = dev.clone();
    std::thread::spawn(move || accept_loop(Box::new(l), d2, Registry::new(), policy));
    // SAFETY: set before any other thread of this test process reads the environment.
    unsafe { std::env::set_var("TESSERA_IDM_TCP", addr.to_string()) };

    // SAFETY: all calls follow the driver API contracts with valid pointers.
    unsafe {
        assert_eq!(cuInit(0), 0);
        let mut ctx: Handle = null_mut();
        assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), 0);
        assert_eq!(cuCtxSetCurrent(ctx), 0);
        let len = (40 << 20) + 5;
        let mut p: CUdeviceptr = 0;
        assert_eq!(cuMemAlloc_v2(&mut p, len), 0);
        let src: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        assert_eq!(cuMemcpyHtoD_v2(p, src.as_ptr().cast(), len), 0);
        let mut back = vec![0u8; len];
        assert_eq!(cuMemcpyDtoH_v2(back.as_mut_ptr().cast(), p, len), 0);
        assert!(back == src, "inline round trip over TCP");
        assert_eq!(dev.used(), len as u64);
        assert_eq!(cuMemFree_v2(p), 0);
        assert_eq!(cuDevicePrimaryCtxRelease_v2(0), 0);
        assert_eq!(
            dev.used(),
            0,
            "releasing the primary context frees everything"
        );
    }
}
