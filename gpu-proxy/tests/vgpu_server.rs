//! The proxy's connection loop over a real unix socket with the memfd bulk area, using the test
//! double as the device.

use std::sync::Arc;

use tessera_gpu_proxy::double::TestDouble;
use tessera_gpu_proxy::metrics::Registry;
use tessera_gpu_proxy::server::{Policy, run_connection};
use tessera_gpu_proxy::session::TenantConfig;
use tessera_idm::transport::unix::{UnixListener, UnixTransport};
use tessera_idm::{Call, Client, Listener, Payload, Reply, cu};

#[test]
fn tenant_over_unix_socket_with_shm_copies_and_disconnect_cleanup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let dev = Arc::new(TestDouble::new(1 << 30));
    let reg = Registry::new();
    let policy = Policy {
        default: TenantConfig {
            memory_quota: 1 << 30,
            compute_share: 1.0,
            device: 0,
        },
        by_uid: vec![(
            nix::unistd::getuid().as_raw(),
            TenantConfig {
                memory_quota: 32 << 20,
                compute_share: 1.0,
                device: 0,
            },
        )],
    };
    let (d2, r2) = (dev.clone(), reg.clone());
    let server =
        std::thread::spawn(move || run_connection(l.accept().expect("accept"), d2, r2, &policy));

    let mut t = UnixTransport::connect(&path).expect("connect");
    tessera_idm::handshake::client_handshake(&mut t, "test").expect("handshake");
    t.offer_shm(8 << 20, 1_000_000).expect("offer");
    let mut c = Client::new_after_handshake(Box::new(t));
    c.wait(1_000_000).expect("offer acknowledged");

    assert_eq!(
        c.call(&Call::CtxCreate { flags: 0, dev: 0 })
            .expect("call")
            .result,
        0
    );
    // The uid override applies: 32 MiB.
    assert_eq!(
        c.call(&Call::MemAlloc { size: 33 << 20 })
            .expect("call")
            .result,
        cu::OUT_OF_MEMORY
    );
    let p = match c
        .call(&Call::MemAlloc { size: 4 << 20 })
        .expect("call")
        .reply
    {
        Reply::U64(p) => p,
        other => panic!("{other:?}"),
    };
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    c.transport
        .shm()
        .expect("area")
        .slice_mut(0, 4 << 20)
        .expect("range")
        .copy_from_slice(&data);
    let r = c
        .call(&Call::MemcpyHtoD {
            dst: p,
            data: Payload::Shm {
                offset: 0,
                len: 4 << 20,
            },
            stream: 0,
        })
        .expect("call");
    assert_eq!(r.result, 0);
    c.transport
        .shm()
        .expect("area")
        .slice_mut(0, 4 << 20)
        .expect("range")
        .fill(0);
    let r = c
        .call(&Call::MemcpyDtoH {
            src: p,
            len: 4 << 20,
            to_shm: Some(4 << 20),
            stream: 0,
        })
        .expect("call");
    assert_eq!(
        r.reply,
        Reply::Data(Payload::Shm {
            offset: 4 << 20,
            len: 4 << 20
        })
    );
    assert_eq!(
        c.transport
            .shm()
            .expect("area")
            .slice(4 << 20, 4 << 20)
            .expect("range"),
        &data[..]
    );
    // A range past the area's end is refused, not a crash.
    let r = c
        .call(&Call::MemcpyDtoH {
            src: p,
            len: 4 << 20,
            to_shm: Some(6 << 20),
            stream: 0,
        })
        .expect("call");
    assert_eq!(r.result, cu::INVALID_VALUE);
    assert_eq!(dev.used(), 4 << 20);

    // Crash: drop the connection without a goodbye.
    drop(c);
    let tenant = server.join().expect("server thread").expect("tenant ran");
    assert_eq!(dev.used(), 0);
    assert_eq!(dev.contexts(), 0);
    let text = reg.render();
    assert!(
        text.contains(&format!(
            "tessera_vgpu_tenant_memory_bytes{{tenant=\"{tenant}\"}} 0"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "tessera_vgpu_tenant_connected{{tenant=\"{tenant}\"}} 0"
        )),
        "{text}"
    );
}

#[test]
fn garbage_after_handshake_drops_the_tenant_cleanly() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let dev = Arc::new(TestDouble::new(1 << 20));
    let policy = Policy {
        default: TenantConfig {
            memory_quota: 1 << 20,
            compute_share: 1.0,
            device: 0,
        },
        by_uid: vec![],
    };
    let d2 = dev.clone();
    let server = std::thread::spawn(move || {
        run_connection(l.accept().expect("accept"), d2, Registry::new(), &policy)
    });
    let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n and more bytes")
        .expect("write");
    assert_eq!(
        server.join().expect("server"),
        None,
        "no tenant without a handshake"
    );
}

#[test]
fn one_way_launch_errors_surface_at_the_next_synchronisation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let dev = Arc::new(TestDouble::new(1 << 20));
    let policy = Policy {
        default: TenantConfig {
            memory_quota: 1 << 20,
            compute_share: 1.0,
            device: 0,
        },
        by_uid: vec![],
    };
    let d2 = dev.clone();
    let server = std::thread::spawn(move || {
        run_connection(l.accept().expect("accept"), d2, Registry::new(), &policy)
    });
    let t = UnixTransport::connect(&path).expect("connect");
    let mut c = Client::new(Box::new(t), "oneway").expect("handshake");
    assert_eq!(
        c.call(&Call::CtxCreate { flags: 0, dev: 0 })
            .expect("call")
            .result,
        0
    );
    let bad = Call::LaunchKernel {
        func: 0xdead_0000,
        grid: [1; 3],
        block: [1; 3],
        shared_mem: 0,
        stream: 0,
        params: vec![],
    };
    c.send_oneway(bad).expect("send");
    // A non-synchronising call is answered normally and keeps the error pending.
    assert_eq!(
        c.call(&Call::MemAlloc { size: 64 }).expect("call").result,
        0
    );
    assert_eq!(
        c.call(&Call::StreamSynchronize { stream: 0 })
            .expect("call")
            .result,
        cu::INVALID_HANDLE
    );
    assert_eq!(
        c.call(&Call::StreamSynchronize { stream: 0 })
            .expect("call")
            .result,
        0,
        "reported once"
    );
    drop(c);
    assert!(server.join().expect("server").is_some());
    assert_eq!(dev.used(), 0);
}
