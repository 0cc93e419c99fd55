//! Framing, codec and handshake logic.

use proptest::prelude::*;
use tessera_idm::frame::{FRAME_VERSION, HEADER_LEN, Header, MAGIC, MAX_PAYLOAD};
use tessera_idm::msg::{Hello, Welcome, decode_frame, negotiate};
use tessera_idm::{
    Call, Event, Frame, IdmError, Kind, Message, ParamInfo, Payload, Reply, Response,
};

fn sample_calls() -> Vec<Call> {
    vec![
        Call::Ping,
        Call::Init { flags: 0 },
        Call::DeviceGetAttribute { attrib: 75, dev: 0 },
        Call::CtxCreate { flags: 4, dev: 1 },
        Call::MemAlloc { size: 1 << 30 },
        Call::MemcpyHtoD {
            dst: 0x7f00_0000_1000,
            data: Payload::Inline(vec![1, 2, 3]),
            stream: 0,
        },
        Call::MemcpyHtoD {
            dst: 0x7f00_0000_1000,
            data: Payload::Shm {
                offset: 4096,
                len: 1 << 20,
            },
            stream: 9,
        },
        Call::MemcpyDtoH {
            src: 5,
            len: 7,
            to_shm: Some(64),
            stream: 0,
        },
        Call::MemcpyDtoH {
            src: 5,
            len: 7,
            to_shm: None,
            stream: 3,
        },
        Call::MemsetD32 {
            dst: 8,
            value: 0xdead_beef,
            count: 100,
            stream: 0,
        },
        Call::ModuleLoadData {
            image: b".version 8.0\0".to_vec(),
        },
        Call::ModuleGetFunction {
            module: 3,
            name: "saxpy".into(),
        },
        Call::LaunchKernel {
            func: 77,
            grid: [4, 1, 1],
            block: [256, 1, 1],
            shared_mem: 0,
            stream: 2,
            params: vec![0; 24],
        },
        Call::EventElapsedTime { start: 1, end: 2 },
    ]
}

#[test]
fn calls_round_trip_through_frames() {
    for (i, c) in sample_calls().into_iter().enumerate() {
        let bytes = Message::Request(c.clone())
            .to_frame(i as u64 + 10)
            .to_bytes()
            .expect("fits");
        let (id, m) = decode_frame(&bytes).expect("decodes");
        assert_eq!(id, i as u64 + 10);
        assert_eq!(m, Message::Request(c));
    }
}

#[test]
fn responses_and_events_round_trip() {
    let rs = vec![
        Response::err(tessera_idm::cu::OUT_OF_MEMORY),
        Response::ok(Reply::Function {
            handle: 9,
            params: vec![
                ParamInfo { offset: 0, size: 8 },
                ParamInfo { offset: 8, size: 4 },
            ],
        }),
        Response::ok(Reply::Uuid([7; 16])),
        Response::ok(Reply::F32(1.5)),
        Response::ok(Reply::Data(Payload::Inline(vec![9; 100]))),
    ];
    for r in rs {
        assert_eq!(Response::decode(&r.encode()).expect("decodes"), r);
    }
    let e = Event::Shutdown {
        reason: "bye".into(),
    };
    assert_eq!(Event::decode(&e.encode()).expect("decodes"), e);
}

#[test]
fn header_rejects_bad_magic_version_kind_and_length() {
    let good = Header {
        kind: Kind::Request,
        request_id: 1,
        len: 4,
    }
    .encode();
    assert!(Header::decode(&good).is_ok());

    let mut bad = good;
    bad[0] ^= 0xff;
    assert!(matches!(Header::decode(&bad), Err(IdmError::BadMagic(_))));

    let mut bad = good;
    bad[4..6].copy_from_slice(&(FRAME_VERSION + 1).to_le_bytes());
    assert!(matches!(
        Header::decode(&bad),
        Err(IdmError::UnsupportedFrameVersion(2))
    ));

    let mut bad = good;
    bad[6..8].copy_from_slice(&99u16.to_le_bytes());
    assert!(matches!(
        Header::decode(&bad),
        Err(IdmError::UnknownKind(99))
    ));

    let mut bad = good;
    bad[16..20].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
    assert!(matches!(
        Header::decode(&bad),
        Err(IdmError::TooLong { .. })
    ));
    assert_eq!(
        u32::from_le_bytes(good[0..4].try_into().expect("4 bytes")),
        MAGIC
    );
    assert_eq!(good.len(), HEADER_LEN);
}

#[test]
fn payload_errors_are_typed() {
    // Unknown call tag.
    let f = Frame::new(Kind::Request, 1, vec![0xff, 0xff]);
    assert!(matches!(
        Message::from_frame(&f),
        Err(IdmError::UnknownTag { what: "call", .. })
    ));
    // Truncated: MemAlloc without its size.
    let f = Frame::new(Kind::Request, 1, vec![14, 0, 1]);
    assert!(matches!(
        Message::from_frame(&f),
        Err(IdmError::Truncated { .. })
    ));
    // Trailing bytes after Ping.
    let f = Frame::new(Kind::Request, 1, vec![0, 0, 1]);
    assert!(matches!(
        Message::from_frame(&f),
        Err(IdmError::TrailingBytes(1))
    ));
    // A length prefix larger than the payload is caught before allocating.
    let mut p = vec![22, 0];
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    let f = Frame::new(Kind::Request, 1, p);
    assert!(matches!(
        Message::from_frame(&f),
        Err(IdmError::Truncated { .. })
    ));
    // Bad UTF-8 in a function name.
    let mut p = vec![24, 0];
    p.extend_from_slice(&3u64.to_le_bytes());
    p.extend_from_slice(&2u32.to_le_bytes());
    p.extend_from_slice(&[0xc3, 0x28]);
    let f = Frame::new(Kind::Request, 1, p);
    assert!(matches!(Message::from_frame(&f), Err(IdmError::BadUtf8)));
    // A param-info count that cannot fit.
    let mut p = 0u32.to_le_bytes().to_vec();
    p.push(7);
    p.extend_from_slice(&1u64.to_le_bytes());
    p.extend_from_slice(&1_000_000u32.to_le_bytes());
    assert!(matches!(
        Response::decode(&p),
        Err(IdmError::Truncated { .. })
    ));
    // Frame shorter than its header says.
    let mut bytes = Message::Request(Call::Ping)
        .to_frame(1)
        .to_bytes()
        .expect("fits");
    bytes[16] = 9;
    assert!(matches!(
        decode_frame(&bytes),
        Err(IdmError::Truncated { .. })
    ));
    // Hello with min > max.
    let h = Message::Hello(Hello {
        min_version: 3,
        max_version: 1,
        client: "x".into(),
    });
    assert!(matches!(
        Message::from_frame(&h.to_frame(0)),
        Err(IdmError::InvalidField { .. })
    ));
}

#[test]
fn version_negotiation_picks_highest_common() {
    assert_eq!(negotiate((1, 3), (2, 5)), Some(3));
    assert_eq!(negotiate((1, 1), (1, 1)), Some(1));
    assert_eq!(negotiate((4, 6), (1, 3)), None);
    let w = Message::Welcome(Welcome::Refused {
        reason: "no".into(),
    });
    assert_eq!(Message::from_frame(&w.to_frame(0)).expect("decodes"), w);
}

proptest! {
    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_payloads(kind in 1u16..=7, payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let f = Frame::new(Kind::from_u16(kind).expect("valid kind"), 1, payload);
        if let Ok(m) = Message::from_frame(&f) {
            // Whatever decodes must re-encode to a frame that decodes to the same message.
            let again = Message::from_frame(&m.to_frame(1)).expect("re-decodes");
            prop_assert_eq!(again, m);
        }
    }

    #[test]
    fn memcpy_round_trips(dst: u64, stream: u64, data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let c = Call::MemcpyHtoD { dst, data: Payload::Inline(data), stream };
        prop_assert_eq!(Call::decode(&c.encode()).expect("decodes"), c);
    }
}

/// Found by the fuzzer: a NaN `Reply::F32` decodes and re-encodes to the same bytes (the message is
/// not `==` to itself, since NaN != NaN, so byte equality is the round-trip property).
#[test]
fn nan_float_reply_round_trips_byte_for_byte() {
    let input = include_bytes!("../fuzz/regressions/nan-f32-reply.bin");
    let (id, msg) = tessera_idm::msg::decode_frame(input).unwrap();
    let bytes = msg.to_frame(id).to_bytes().unwrap();
    let (id2, msg2) = tessera_idm::msg::decode_frame(&bytes).unwrap();
    assert_eq!(id, id2);
    assert_eq!(bytes, msg2.to_frame(id2).to_bytes().unwrap());
    assert_ne!(
        msg, msg2,
        "NaN compares unequal: why the fuzz target compares bytes"
    );
}
