//! The session on the real CUDA driver, where one exists (skips with one line elsewhere).

use std::sync::Arc;

use tessera_gpu_proxy::cuda::CudaDriver;
use tessera_gpu_proxy::metrics::Registry;
use tessera_gpu_proxy::session::{Session, TenantConfig};
use tessera_idm::{Call, Payload, Reply, cu};

#[test]
fn session_on_the_real_driver() {
    let drv = match CudaDriver::load(0) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    let reg = Registry::new();
    let cfg = TenantConfig {
        memory_quota: 64 << 20,
        compute_share: 1.0,
        device: 0,
    };
    let mut a = Session::new(drv.clone(), reg.clone(), "a".into(), cfg);
    assert_eq!(
        a.handle(Call::CtxCreate { flags: 0, dev: 0 }, None).result,
        0
    );
    let p = match a.handle(Call::MemAlloc { size: 1 << 20 }, None).reply {
        Reply::U64(p) => p,
        other => panic!("{other:?}"),
    };
    let r = a.handle(
        Call::MemcpyDtoH {
            src: p,
            len: 1 << 20,
            to_shm: None,
            stream: 0,
        },
        None,
    );
    match r.reply {
        Reply::Data(Payload::Inline(v)) => assert!(v.iter().all(|b| *b == 0), "scrubbed"),
        other => panic!("{other:?}"),
    }
    let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    assert_eq!(
        a.handle(
            Call::MemcpyHtoD {
                dst: p + 4096,
                data: Payload::Inline(data.clone()),
                stream: 0
            },
            None
        )
        .result,
        0
    );
    match a
        .handle(
            Call::MemcpyDtoH {
                src: p + 4096,
                len: 4096,
                to_shm: None,
                stream: 0,
            },
            None,
        )
        .reply
    {
        Reply::Data(Payload::Inline(v)) => assert_eq!(v, data),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a.handle(Call::MemAlloc { size: 64 << 20 }, None).result,
        cu::OUT_OF_MEMORY
    );
    let mut b = Session::new(drv, reg, "b".into(), cfg);
    assert_eq!(
        b.handle(Call::CtxCreate { flags: 0, dev: 0 }, None).result,
        0
    );
    assert_eq!(
        b.handle(
            Call::MemcpyDtoH {
                src: p,
                len: 16,
                to_shm: None,
                stream: 0
            },
            None
        )
        .result,
        cu::INVALID_VALUE
    );
    a.close();
    b.close();
}
