//! Transports over real sockets: unix (SO_PEERCRED + memfd area), TCP, vsock.

use std::thread;

use tessera_idm::handshake::{Client, server_handshake};
use tessera_idm::msg::{PROTOCOL_MAX, PROTOCOL_MIN};
use tessera_idm::transport::unix::{UnixListener, UnixTransport};
use tessera_idm::transport::{tcp, vsock};
use tessera_idm::{Call, Listener, Message, Payload, PeerIdentity, Reply, Response, Transport};

/// A tiny echo server: answers Ping, and for MemcpyHtoD from shm returns the sum of the bytes.
fn serve_one(mut t: Box<dyn Transport>) -> PeerIdentity {
    server_handshake(t.as_mut(), "test", (PROTOCOL_MIN, PROTOCOL_MAX)).expect("handshake");
    let peer = t.peer().clone();
    while let Ok(f) = t.recv() {
        let resp = match Message::from_frame(&f).expect("valid") {
            Message::ShmOffer(_) => Response::ok(Reply::None),
            Message::Request(Call::Ping) => Response::ok(Reply::U64(42)),
            Message::Request(Call::MemcpyHtoD {
                data: Payload::Shm { offset, len },
                ..
            }) => {
                let area = t.shm().expect("area mapped");
                let sum: u64 = area
                    .slice(offset, len)
                    .expect("in range")
                    .iter()
                    .map(|b| u64::from(*b))
                    .sum();
                // Write back into the area so the client sees the server's side of the mapping.
                area.slice_mut(0, 4)
                    .expect("in range")
                    .copy_from_slice(b"ack!");
                Response::ok(Reply::U64(sum))
            }
            Message::Goodbye => break,
            _ => Response::err(tessera_idm::cu::NOT_SUPPORTED),
        };
        t.send(&Message::Response(resp).to_frame(f.request_id))
            .expect("send");
    }
    peer
}

#[test]
fn unix_socket_peer_credentials_and_memfd_area() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idm.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let server = thread::spawn(move || serve_one(l.accept().expect("accept")));

    let mut t = UnixTransport::connect(&path).expect("connect");
    let (version, tenant) =
        tessera_idm::handshake::client_handshake(&mut t, "client").expect("handshake");
    assert_eq!(version, PROTOCOL_MAX);
    assert!(
        tenant.contains(&format!("pid={}", std::process::id())),
        "{tenant}"
    );

    t.offer_shm(1 << 20, 100).expect("offer");
    let f = t.recv().expect("offer ack");
    assert_eq!(f.request_id, 100);
    {
        let area = t.shm().expect("client area");
        area.slice_mut(8, 1000).expect("in range").fill(3);
    }
    let req = Call::MemcpyHtoD {
        dst: 0,
        data: Payload::Shm {
            offset: 8,
            len: 1000,
        },
        stream: 0,
    };
    t.send(&Message::Request(req).to_frame(101)).expect("send");
    let r = Message::from_frame(&t.recv().expect("reply")).expect("valid");
    assert_eq!(r, Message::Response(Response::ok(Reply::U64(3000))));
    assert_eq!(
        t.shm().expect("area").slice(0, 4).expect("in range"),
        b"ack!"
    );
    t.send(&Message::Goodbye.to_frame(0)).expect("bye");

    let peer = server.join().expect("server thread");
    match peer {
        PeerIdentity::Unix { pid, uid, .. } => {
            assert_eq!(pid as u32, std::process::id());
            assert_eq!(uid, nix::unistd::getuid().as_raw());
        }
        other => panic!("unexpected identity {other:?}"),
    }
}

#[test]
fn shm_range_outside_area_is_an_error() {
    let mut a = tessera_idm::SharedArea::create(4096).expect("memfd");
    assert!(a.slice(4000, 97).is_err());
    assert!(a.slice_mut(u64::MAX, 2).is_err());
    assert_eq!(a.slice(4000, 96).expect("in range").len(), 96);
}

#[test]
fn tcp_round_trip_with_peer_address() {
    let l = tcp::TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = l.local_addr().expect("addr");
    let server = thread::spawn(move || serve_one(l.accept().expect("accept")));
    let mut c = Client::new(Box::new(tcp::connect(addr).expect("connect")), "tcp-client")
        .expect("handshake");
    assert_eq!(
        c.call(&Call::Ping).expect("ping"),
        Response::ok(Reply::U64(42))
    );
    assert!(c.tenant.starts_with("tcp:127.0.0.1:"));
    c.transport
        .send(&Message::Goodbye.to_frame(0))
        .expect("bye");
    assert!(matches!(
        server.join().expect("server"),
        PeerIdentity::Tcp { .. }
    ));
}

#[test]
fn vsock_loopback_round_trip_with_cid() {
    let l = match vsock::VsockListener::bind(vsock::VMADDR_CID_ANY, 47_123) {
        Ok(l) => l,
        Err(e) => {
            println!("skipped: no AF_VSOCK in this kernel ({e})");
            return;
        }
    };
    let t = match vsock::connect(vsock::VMADDR_CID_LOCAL, 47_123) {
        Ok(t) => t,
        Err(e) => {
            println!("skipped: no vsock loopback (vsock_loopback module) here ({e})");
            return;
        }
    };
    let server = thread::spawn(move || serve_one(l.accept().expect("accept")));
    let mut c = Client::new(Box::new(t), "vsock-client").expect("handshake");
    assert_eq!(
        c.call(&Call::Ping).expect("ping"),
        Response::ok(Reply::U64(42))
    );
    c.transport
        .send(&Message::Goodbye.to_frame(0))
        .expect("bye");
    match server.join().expect("server") {
        PeerIdentity::Vsock { cid, .. } => assert_eq!(cid, vsock::VMADDR_CID_LOCAL),
        other => panic!("unexpected identity {other:?}"),
    }
}
