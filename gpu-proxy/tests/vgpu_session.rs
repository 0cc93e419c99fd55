//! Tenant isolation, quota, scrubbing, marshalling and teardown, with the in-memory test double
//! (logic only; the GPU run is `make gpu-test-vgpu`).

use std::sync::Arc;

use tessera_gpu_proxy::double::{TestDouble, layout_of};
use tessera_gpu_proxy::metrics::Registry;
use tessera_gpu_proxy::session::{Session, TenantConfig};
use tessera_idm::{Call, ParamInfo, Payload, Reply, Response, cu};

const MIB: u64 = 1 << 20;

fn cfg(quota: u64) -> TenantConfig {
    TenantConfig {
        memory_quota: quota,
        compute_share: 1.0,
        device: 0,
    }
}

fn ok(r: Response) -> Reply {
    assert_eq!(r.result, cu::SUCCESS, "call failed: {r:?}");
    r.reply
}

fn call(s: &mut Session, c: Call) -> Response {
    s.handle(c, None)
}

fn handle(r: Response) -> u64 {
    match ok(r) {
        Reply::Handle(h) | Reply::U64(h) => h,
        other => panic!("no handle in {other:?}"),
    }
}

fn setup(quota: u64) -> (Arc<TestDouble>, Arc<Registry>, Session, Session) {
    let dev = Arc::new(TestDouble::new(64 * MIB));
    let reg = Registry::new();
    let a = Session::new(dev.clone(), reg.clone(), "a".into(), cfg(quota));
    let b = Session::new(dev.clone(), reg.clone(), "b".into(), cfg(quota));
    (dev, reg, a, b)
}

fn with_ctx(s: &mut Session) -> u64 {
    handle(call(s, Call::CtxCreate { flags: 0, dev: 0 }))
}

#[test]
fn calls_need_a_context_and_device_zero() {
    let (_d, _r, mut a, _b) = setup(8 * MIB);
    assert_eq!(
        call(&mut a, Call::MemAlloc { size: 16 }).result,
        cu::INVALID_CONTEXT
    );
    assert_eq!(
        call(&mut a, Call::CtxCreate { flags: 0, dev: 1 }).result,
        cu::INVALID_DEVICE
    );
    assert_eq!(ok(call(&mut a, Call::DeviceGetCount)), Reply::I32(1));
    with_ctx(&mut a);
    assert!(matches!(
        ok(call(&mut a, Call::MemAlloc { size: 16 })),
        Reply::U64(_)
    ));
}

#[test]
fn quota_is_per_tenant_and_reported_as_device_memory() {
    let (_d, _r, mut a, mut b) = setup(8 * MIB);
    with_ctx(&mut a);
    with_ctx(&mut b);
    let p = handle(call(&mut a, Call::MemAlloc { size: 6 * MIB }));
    assert_eq!(
        call(&mut a, Call::MemAlloc { size: 3 * MIB }).result,
        cu::OUT_OF_MEMORY
    );
    // B's quota is its own.
    handle(call(&mut b, Call::MemAlloc { size: 6 * MIB }));
    assert_eq!(
        ok(call(&mut a, Call::MemGetInfo)),
        Reply::MemInfo {
            free: 2 * MIB,
            total: 8 * MIB
        }
    );
    assert_eq!(
        ok(call(&mut a, Call::DeviceTotalMem { dev: 0 })),
        Reply::U64(8 * MIB)
    );
    ok(call(&mut a, Call::MemFree { ptr: p }));
    handle(call(&mut a, Call::MemAlloc { size: 3 * MIB }));
    assert_eq!(
        a.stats()
            .memory_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        3 * MIB
    );
}

#[test]
fn cross_tenant_pointers_and_handles_are_rejected() {
    let (_d, _r, mut a, mut b) = setup(8 * MIB);
    with_ctx(&mut a);
    with_ctx(&mut b);
    let pa = handle(call(&mut a, Call::MemAlloc { size: 4096 }));
    let sa = handle(call(&mut a, Call::StreamCreate { flags: 0 }));
    let ea = handle(call(&mut a, Call::EventCreate { flags: 0 }));

    let bad = [
        Call::MemcpyHtoD {
            dst: pa,
            data: Payload::Inline(vec![1; 16]),
            stream: 0,
        },
        Call::MemcpyDtoH {
            src: pa,
            len: 16,
            to_shm: None,
            stream: 0,
        },
        Call::MemsetD8 {
            dst: pa,
            value: 1,
            count: 16,
            stream: 0,
        },
        Call::MemFree { ptr: pa },
    ];
    for c in bad {
        assert_eq!(call(&mut b, c.clone()).result, cu::INVALID_VALUE, "{c:?}");
    }
    assert_eq!(
        call(&mut b, Call::StreamSynchronize { stream: sa }).result,
        cu::INVALID_HANDLE
    );
    assert_eq!(
        call(
            &mut b,
            Call::EventRecord {
                event: ea,
                stream: 0
            }
        )
        .result,
        cu::INVALID_HANDLE
    );
    // A's own calls work, including offsets into the allocation; overruns do not.
    ok(call(
        &mut a,
        Call::MemsetD8 {
            dst: pa + 100,
            value: 7,
            count: 3996,
            stream: sa,
        },
    ));
    assert_eq!(
        call(
            &mut a,
            Call::MemsetD8 {
                dst: pa + 100,
                value: 7,
                count: 3997,
                stream: 0
            }
        )
        .result,
        cu::INVALID_VALUE
    );
    // A DtoD from A's buffer into B's own buffer is refused too.
    let pb = handle(call(&mut b, Call::MemAlloc { size: 4096 }));
    assert_eq!(
        call(
            &mut b,
            Call::MemcpyDtoD {
                dst: pb,
                src: pa,
                len: 16,
                stream: 0
            }
        )
        .result,
        cu::INVALID_VALUE
    );
    // A stream handle used as an event is not an event.
    assert_eq!(
        call(&mut a, Call::EventQuery { event: sa }).result,
        cu::INVALID_HANDLE
    );
}

#[test]
fn fresh_allocations_are_zero_after_another_tenant_freed_data() {
    let (_d, _r, mut a, mut b) = setup(8 * MIB);
    with_ctx(&mut a);
    with_ctx(&mut b);
    let pa = handle(call(&mut a, Call::MemAlloc { size: MIB }));
    ok(call(
        &mut a,
        Call::MemsetD8 {
            dst: pa,
            value: 0xee,
            count: MIB,
            stream: 0,
        },
    ));
    ok(call(&mut a, Call::MemFree { ptr: pa }));
    let pb = handle(call(&mut b, Call::MemAlloc { size: MIB }));
    match ok(call(
        &mut b,
        Call::MemcpyDtoH {
            src: pb,
            len: MIB,
            to_shm: None,
            stream: 0,
        },
    )) {
        // The double fills new memory with 0xa5, so only scrubbing makes it zero.
        Reply::Data(Payload::Inline(v)) => assert!(v.iter().all(|b| *b == 0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn kernel_params_follow_the_reported_layout_and_foreign_pointers_are_refused() {
    let (dev, _r, mut a, mut b) = setup(8 * MIB);
    with_ctx(&mut a);
    with_ctx(&mut b);
    let m = handle(call(
        &mut a,
        Call::ModuleLoadData {
            image: b"fn fill 8,4,4\nfn mix 4,8,2,8\n".to_vec(),
        },
    ));
    let (f, layout) = match ok(call(
        &mut a,
        Call::ModuleGetFunction {
            module: m,
            name: "fill".into(),
        },
    )) {
        Reply::Function { handle, params } => (handle, params),
        other => panic!("{other:?}"),
    };
    assert_eq!(layout, layout_of(&[8, 4, 4]));
    match ok(call(
        &mut a,
        Call::ModuleGetFunction {
            module: m,
            name: "mix".into(),
        },
    )) {
        Reply::Function { params, .. } => assert_eq!(
            params,
            vec![
                ParamInfo { offset: 0, size: 4 },
                ParamInfo { offset: 8, size: 8 },
                ParamInfo {
                    offset: 16,
                    size: 2
                },
                ParamInfo {
                    offset: 24,
                    size: 8
                }
            ]
        ),
        other => panic!("{other:?}"),
    }
    let p = handle(call(&mut a, Call::MemAlloc { size: 64 }));
    let mut params = Vec::new();
    params.extend_from_slice(&p.to_le_bytes());
    params.extend_from_slice(&0x1234_5678u32.to_le_bytes());
    params.extend_from_slice(&16u32.to_le_bytes());
    let launch = |func, params: Vec<u8>| Call::LaunchKernel {
        func,
        grid: [1, 1, 1],
        block: [16, 1, 1],
        shared_mem: 0,
        stream: 0,
        params,
    };
    ok(call(&mut a, launch(f, params.clone())));
    match ok(call(
        &mut a,
        Call::MemcpyDtoH {
            src: p,
            len: 64,
            to_shm: None,
            stream: 0,
        },
    )) {
        Reply::Data(Payload::Inline(v)) => {
            assert!(v.chunks(4).all(|c| c == 0x1234_5678u32.to_le_bytes()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dev.launches().len(), 1);
    // Wrong parameter buffer size.
    assert_eq!(
        call(&mut a, launch(f, params[..12].to_vec())).result,
        cu::INVALID_VALUE
    );
    // B cannot launch A's function, nor pass A's pointer to its own kernel.
    assert_eq!(
        call(&mut b, launch(f, params.clone())).result,
        cu::INVALID_HANDLE
    );
    let mb = handle(call(
        &mut b,
        Call::ModuleLoadData {
            image: b"fn fill 8,4,4\n".to_vec(),
        },
    ));
    let fb = match ok(call(
        &mut b,
        Call::ModuleGetFunction {
            module: mb,
            name: "fill".into(),
        },
    )) {
        Reply::Function { handle, .. } => handle,
        other => panic!("{other:?}"),
    };
    let mut foreign = params.clone();
    foreign[..8].copy_from_slice(&(p + 8).to_le_bytes());
    assert_eq!(call(&mut b, launch(fb, foreign)).result, cu::INVALID_VALUE);
    assert_eq!(
        dev.launches().len(),
        1,
        "refused launches never reach the driver"
    );
    // Unloading the module invalidates its functions.
    ok(call(&mut a, Call::ModuleUnload { module: m }));
    assert_eq!(call(&mut a, launch(f, params)).result, cu::INVALID_HANDLE);
}

#[test]
fn module_globals_are_copyable_by_their_tenant_only() {
    let (_d, _r, mut a, mut b) = setup(8 * MIB);
    with_ctx(&mut a);
    with_ctx(&mut b);
    let m = handle(call(
        &mut a,
        Call::ModuleLoadData {
            image: b"global table 256\n".to_vec(),
        },
    ));
    let (g, size) = match ok(call(
        &mut a,
        Call::ModuleGetGlobal {
            module: m,
            name: "table".into(),
        },
    )) {
        Reply::Global { ptr, size } => (ptr, size),
        other => panic!("{other:?}"),
    };
    assert_eq!(size, 256);
    ok(call(
        &mut a,
        Call::MemcpyHtoD {
            dst: g,
            data: Payload::Inline(vec![3; 256]),
            stream: 0,
        },
    ));
    assert_eq!(
        call(
            &mut b,
            Call::MemcpyHtoD {
                dst: g,
                data: Payload::Inline(vec![3; 256]),
                stream: 0
            }
        )
        .result,
        cu::INVALID_VALUE
    );
}

#[test]
fn disconnect_frees_everything_and_metrics_show_it() {
    let (dev, reg, mut a, mut b) = setup(16 * MIB);
    with_ctx(&mut a);
    with_ctx(&mut b);
    for _ in 0..3 {
        handle(call(&mut a, Call::MemAlloc { size: MIB }));
    }
    handle(call(&mut a, Call::StreamCreate { flags: 0 }));
    handle(call(&mut a, Call::EventCreate { flags: 0 }));
    handle(call(
        &mut a,
        Call::ModuleLoadData {
            image: b"fn k\n".to_vec(),
        },
    ));
    let pb = handle(call(&mut b, Call::MemAlloc { size: MIB }));
    assert_eq!(dev.used(), 4 * MIB);
    assert_eq!(dev.contexts(), 2);
    let text = reg.render();
    assert!(
        text.contains(&format!(
            "tessera_vgpu_tenant_memory_bytes{{tenant=\"{}\"}} {}",
            a.tenant_id,
            3 * MIB
        )),
        "{text}"
    );

    a.close();
    assert_eq!(dev.used(), MIB, "only B's buffer is left");
    assert_eq!(dev.contexts(), 1);
    assert_eq!(dev.live_objects(), 0);
    let text = reg.render();
    assert!(
        text.contains(&format!(
            "tessera_vgpu_tenant_memory_bytes{{tenant=\"{}\"}} 0",
            a.tenant_id
        )),
        "{text}"
    );
    assert!(text.contains("tessera_vgpu_tenants_connected 1"), "{text}");
    // B carries on.
    ok(call(
        &mut b,
        Call::MemsetD32 {
            dst: pb,
            value: 5,
            count: MIB / 4,
            stream: 0,
        },
    ));
}

#[test]
fn compute_share_brackets_launches_with_timing_events() {
    let dev = Arc::new(TestDouble::new(64 * MIB));
    let reg = Registry::new();
    let mut s = Session::new(
        dev.clone(),
        reg,
        "t".into(),
        TenantConfig {
            memory_quota: MIB,
            compute_share: 0.5,
            device: 0,
        },
    );
    with_ctx(&mut s);
    let m = handle(call(
        &mut s,
        Call::ModuleLoadData {
            image: b"fn k\n".to_vec(),
        },
    ));
    let f = match ok(call(
        &mut s,
        Call::ModuleGetFunction {
            module: m,
            name: "k".into(),
        },
    )) {
        Reply::Function { handle, .. } => handle,
        other => panic!("{other:?}"),
    };
    for _ in 0..3 {
        ok(call(
            &mut s,
            Call::LaunchKernel {
                func: f,
                grid: [1; 3],
                block: [1; 3],
                shared_mem: 0,
                stream: 0,
                params: vec![],
            },
        ));
    }
    // The double reports 1 ms per timed launch once reaped: the next launches account them.
    ok(call(
        &mut s,
        Call::LaunchKernel {
            func: f,
            grid: [1; 3],
            block: [1; 3],
            shared_mem: 0,
            stream: 0,
            params: vec![],
        },
    ));
    assert!(
        s.stats()
            .kernel_ns_total
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3_000_000
    );
    s.close();
    assert_eq!(
        dev.live_objects(),
        0,
        "timing events are destroyed at close"
    );
}

#[test]
fn destroying_the_last_context_frees_its_resources() {
    let (dev, _r, mut a, _b) = setup(16 * MIB);
    let c1 = with_ctx(&mut a);
    let c2 = with_ctx(&mut a);
    handle(call(&mut a, Call::MemAlloc { size: MIB }));
    handle(call(&mut a, Call::StreamCreate { flags: 0 }));
    ok(call(&mut a, Call::CtxDestroy { ctx: c1 }));
    assert_eq!(
        dev.used(),
        MIB,
        "another context still references the tenant's state"
    );
    assert_eq!(
        call(&mut a, Call::CtxDestroy { ctx: c1 }).result,
        cu::INVALID_CONTEXT
    );
    ok(call(&mut a, Call::CtxDestroy { ctx: c2 }));
    assert_eq!(dev.used(), 0);
    assert_eq!(dev.contexts(), 0);
    assert_eq!(dev.live_objects(), 0);
    assert_eq!(
        call(&mut a, Call::MemAlloc { size: 16 }).result,
        cu::INVALID_CONTEXT
    );
    // Primary context: freed when its last reference is released.
    handle(call(&mut a, Call::PrimaryCtxRetain { dev: 0 }));
    handle(call(&mut a, Call::MemAlloc { size: MIB }));
    ok(call(&mut a, Call::PrimaryCtxRelease { dev: 0 }));
    assert_eq!(dev.used(), 0);
    assert_eq!(
        call(&mut a, Call::PrimaryCtxRelease { dev: 0 }).result,
        cu::INVALID_CONTEXT
    );
}
