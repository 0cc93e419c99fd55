//! Message types carried in frame payloads and their encoding. Every decoder consumes exactly its
//! payload: unknown tags, short fields, bad UTF-8 and trailing bytes are typed errors.

use crate::codec::{Reader, Writer};
use crate::error::{IdmError, Result};
use crate::frame::{Frame, Kind};

/// `CUresult` codes used on the wire (values from the CUDA driver API, `cuda.h`).
pub mod cu {
    pub const SUCCESS: u32 = 0;
    pub const INVALID_VALUE: u32 = 1;
    pub const OUT_OF_MEMORY: u32 = 2;
    pub const NOT_INITIALIZED: u32 = 3;
    pub const DEINITIALIZED: u32 = 4;
    pub const NO_DEVICE: u32 = 100;
    pub const INVALID_DEVICE: u32 = 101;
    pub const INVALID_IMAGE: u32 = 200;
    pub const INVALID_CONTEXT: u32 = 201;
    pub const INVALID_HANDLE: u32 = 400;
    pub const NOT_FOUND: u32 = 500;
    pub const NOT_READY: u32 = 600;
    pub const ILLEGAL_ADDRESS: u32 = 700;
    pub const LAUNCH_FAILED: u32 = 719;
    pub const NOT_PERMITTED: u32 = 800;
    pub const NOT_SUPPORTED: u32 = 801;
    pub const UNKNOWN: u32 = 999;
}

/// Lowest and highest protocol versions this build speaks.
pub const PROTOCOL_MIN: u16 = 1;
pub const PROTOCOL_MAX: u16 = 1;

/// Picks the highest version both sides support, if any.
pub fn negotiate(client: (u16, u16), server: (u16, u16)) -> Option<u16> {
    let lo = client.0.max(server.0);
    let hi = client.1.min(server.1);
    (lo <= hi).then_some(hi)
}

/// Bulk bytes: inline in the frame, or a range of the connection's shared-memory area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Inline(Vec<u8>),
    Shm { offset: u64, len: u64 },
}

impl Payload {
    pub fn len(&self) -> u64 {
        match self {
            Payload::Inline(v) => v.len() as u64,
            Payload::Shm { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn put(&self, w: &mut Writer) {
        match self {
            Payload::Inline(v) => {
                w.u8(0).bytes(v);
            }
            Payload::Shm { offset, len } => {
                w.u8(1).u64(*offset).u64(*len);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(match r.u8()? {
            0 => Payload::Inline(r.bytes()?.to_vec()),
            1 => Payload::Shm {
                offset: r.u64()?,
                len: r.u64()?,
            },
            t => {
                return Err(IdmError::UnknownTag {
                    what: "payload",
                    tag: u32::from(t),
                });
            }
        })
    }
}

/// One kernel parameter as `cuFuncGetParamInfo` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamInfo {
    pub offset: u32,
    pub size: u32,
}

/// A forwarded CUDA driver call. Handles (`ctx`, `module`, `func`, `stream`, `event`) are opaque
/// per-tenant values minted by the proxy; stream 0 is the null stream. Device pointers are real
/// device addresses, checked by the proxy against the tenant's own allocations.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// No-op round trip (benchmarks, liveness).
    Ping,
    Init {
        flags: u32,
    },
    DriverGetVersion,
    DeviceGetCount,
    DeviceGet {
        ordinal: i32,
    },
    DeviceGetName {
        dev: i32,
    },
    DeviceGetAttribute {
        attrib: i32,
        dev: i32,
    },
    DeviceTotalMem {
        dev: i32,
    },
    DeviceGetUuid {
        dev: i32,
    },
    PrimaryCtxRetain {
        dev: i32,
    },
    PrimaryCtxRelease {
        dev: i32,
    },
    CtxCreate {
        flags: u32,
        dev: i32,
    },
    CtxDestroy {
        ctx: u64,
    },
    CtxSynchronize,
    MemAlloc {
        size: u64,
    },
    MemFree {
        ptr: u64,
    },
    MemGetInfo,
    MemcpyHtoD {
        dst: u64,
        data: Payload,
        stream: u64,
    },
    /// `to_shm`: write the bytes at this offset of the shared area instead of inline in the reply.
    MemcpyDtoH {
        src: u64,
        len: u64,
        to_shm: Option<u64>,
        stream: u64,
    },
    MemcpyDtoD {
        dst: u64,
        src: u64,
        len: u64,
        stream: u64,
    },
    MemsetD8 {
        dst: u64,
        value: u8,
        count: u64,
        stream: u64,
    },
    MemsetD32 {
        dst: u64,
        value: u32,
        count: u64,
        stream: u64,
    },
    ModuleLoadData {
        image: Vec<u8>,
    },
    ModuleUnload {
        module: u64,
    },
    ModuleGetFunction {
        module: u64,
        name: String,
    },
    ModuleGetGlobal {
        module: u64,
        name: String,
    },
    /// `params`: the packed parameter buffer, laid out by the [`ParamInfo`] list of the function.
    LaunchKernel {
        func: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        stream: u64,
        params: Vec<u8>,
    },
    StreamCreate {
        flags: u32,
    },
    StreamDestroy {
        stream: u64,
    },
    StreamSynchronize {
        stream: u64,
    },
    StreamQuery {
        stream: u64,
    },
    StreamWaitEvent {
        stream: u64,
        event: u64,
        flags: u32,
    },
    EventCreate {
        flags: u32,
    },
    EventDestroy {
        event: u64,
    },
    EventRecord {
        event: u64,
        stream: u64,
    },
    EventSynchronize {
        event: u64,
    },
    EventQuery {
        event: u64,
    },
    EventElapsedTime {
        start: u64,
        end: u64,
    },
}

impl Call {
    /// The CUDA function name this call stands for (metrics, logs).
    pub fn name(&self) -> &'static str {
        match self {
            Call::Ping => "ping",
            Call::Init { .. } => "cuInit",
            Call::DriverGetVersion => "cuDriverGetVersion",
            Call::DeviceGetCount => "cuDeviceGetCount",
            Call::DeviceGet { .. } => "cuDeviceGet",
            Call::DeviceGetName { .. } => "cuDeviceGetName",
            Call::DeviceGetAttribute { .. } => "cuDeviceGetAttribute",
            Call::DeviceTotalMem { .. } => "cuDeviceTotalMem",
            Call::DeviceGetUuid { .. } => "cuDeviceGetUuid",
            Call::PrimaryCtxRetain { .. } => "cuDevicePrimaryCtxRetain",
            Call::PrimaryCtxRelease { .. } => "cuDevicePrimaryCtxRelease",
            Call::CtxCreate { .. } => "cuCtxCreate",
            Call::CtxDestroy { .. } => "cuCtxDestroy",
            Call::CtxSynchronize => "cuCtxSynchronize",
            Call::MemAlloc { .. } => "cuMemAlloc",
            Call::MemFree { .. } => "cuMemFree",
            Call::MemGetInfo => "cuMemGetInfo",
            Call::MemcpyHtoD { .. } => "cuMemcpyHtoD",
            Call::MemcpyDtoH { .. } => "cuMemcpyDtoH",
            Call::MemcpyDtoD { .. } => "cuMemcpyDtoD",
            Call::MemsetD8 { .. } => "cuMemsetD8",
            Call::MemsetD32 { .. } => "cuMemsetD32",
            Call::ModuleLoadData { .. } => "cuModuleLoadData",
            Call::ModuleUnload { .. } => "cuModuleUnload",
            Call::ModuleGetFunction { .. } => "cuModuleGetFunction",
            Call::ModuleGetGlobal { .. } => "cuModuleGetGlobal",
            Call::LaunchKernel { .. } => "cuLaunchKernel",
            Call::StreamCreate { .. } => "cuStreamCreate",
            Call::StreamDestroy { .. } => "cuStreamDestroy",
            Call::StreamSynchronize { .. } => "cuStreamSynchronize",
            Call::StreamQuery { .. } => "cuStreamQuery",
            Call::StreamWaitEvent { .. } => "cuStreamWaitEvent",
            Call::EventCreate { .. } => "cuEventCreate",
            Call::EventDestroy { .. } => "cuEventDestroy",
            Call::EventRecord { .. } => "cuEventRecord",
            Call::EventSynchronize { .. } => "cuEventSynchronize",
            Call::EventQuery { .. } => "cuEventQuery",
            Call::EventElapsedTime { .. } => "cuEventElapsedTime",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Call::Ping => {
                w.u16(0);
            }
            Call::Init { flags } => {
                w.u16(1).u32(*flags);
            }
            Call::DriverGetVersion => {
                w.u16(2);
            }
            Call::DeviceGetCount => {
                w.u16(3);
            }
            Call::DeviceGet { ordinal } => {
                w.u16(4).i32(*ordinal);
            }
            Call::DeviceGetName { dev } => {
                w.u16(5).i32(*dev);
            }
            Call::DeviceGetAttribute { attrib, dev } => {
                w.u16(6).i32(*attrib).i32(*dev);
            }
            Call::DeviceTotalMem { dev } => {
                w.u16(7).i32(*dev);
            }
            Call::DeviceGetUuid { dev } => {
                w.u16(8).i32(*dev);
            }
            Call::PrimaryCtxRetain { dev } => {
                w.u16(9).i32(*dev);
            }
            Call::PrimaryCtxRelease { dev } => {
                w.u16(10).i32(*dev);
            }
            Call::CtxCreate { flags, dev } => {
                w.u16(11).u32(*flags).i32(*dev);
            }
            Call::CtxDestroy { ctx } => {
                w.u16(12).u64(*ctx);
            }
            Call::CtxSynchronize => {
                w.u16(13);
            }
            Call::MemAlloc { size } => {
                w.u16(14).u64(*size);
            }
            Call::MemFree { ptr } => {
                w.u16(15).u64(*ptr);
            }
            Call::MemGetInfo => {
                w.u16(16);
            }
            Call::MemcpyHtoD { dst, data, stream } => {
                w.u16(17).u64(*dst).u64(*stream);
                data.put(&mut w);
            }
            Call::MemcpyDtoH {
                src,
                len,
                to_shm,
                stream,
            } => {
                w.u16(18).u64(*src).u64(*len).u64(*stream);
                match to_shm {
                    None => w.u8(0),
                    Some(o) => w.u8(1).u64(*o),
                };
            }
            Call::MemcpyDtoD {
                dst,
                src,
                len,
                stream,
            } => {
                w.u16(19).u64(*dst).u64(*src).u64(*len).u64(*stream);
            }
            Call::MemsetD8 {
                dst,
                value,
                count,
                stream,
            } => {
                w.u16(20).u64(*dst).u8(*value).u64(*count).u64(*stream);
            }
            Call::MemsetD32 {
                dst,
                value,
                count,
                stream,
            } => {
                w.u16(21).u64(*dst).u32(*value).u64(*count).u64(*stream);
            }
            Call::ModuleLoadData { image } => {
                w.u16(22).bytes(image);
            }
            Call::ModuleUnload { module } => {
                w.u16(23).u64(*module);
            }
            Call::ModuleGetFunction { module, name } => {
                w.u16(24).u64(*module).str(name);
            }
            Call::ModuleGetGlobal { module, name } => {
                w.u16(25).u64(*module).str(name);
            }
            Call::LaunchKernel {
                func,
                grid,
                block,
                shared_mem,
                stream,
                params,
            } => {
                w.u16(26).u64(*func);
                for g in grid.iter().chain(block.iter()) {
                    w.u32(*g);
                }
                w.u32(*shared_mem).u64(*stream).bytes(params);
            }
            Call::StreamCreate { flags } => {
                w.u16(27).u32(*flags);
            }
            Call::StreamDestroy { stream } => {
                w.u16(28).u64(*stream);
            }
            Call::StreamSynchronize { stream } => {
                w.u16(29).u64(*stream);
            }
            Call::StreamQuery { stream } => {
                w.u16(30).u64(*stream);
            }
            Call::StreamWaitEvent {
                stream,
                event,
                flags,
            } => {
                w.u16(31).u64(*stream).u64(*event).u32(*flags);
            }
            Call::EventCreate { flags } => {
                w.u16(32).u32(*flags);
            }
            Call::EventDestroy { event } => {
                w.u16(33).u64(*event);
            }
            Call::EventRecord { event, stream } => {
                w.u16(34).u64(*event).u64(*stream);
            }
            Call::EventSynchronize { event } => {
                w.u16(35).u64(*event);
            }
            Call::EventQuery { event } => {
                w.u16(36).u64(*event);
            }
            Call::EventElapsedTime { start, end } => {
                w.u16(37).u64(*start).u64(*end);
            }
        }
        w.into_inner()
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let tag = r.u16()?;
        let c = match tag {
            0 => Call::Ping,
            1 => Call::Init { flags: r.u32()? },
            2 => Call::DriverGetVersion,
            3 => Call::DeviceGetCount,
            4 => Call::DeviceGet { ordinal: r.i32()? },
            5 => Call::DeviceGetName { dev: r.i32()? },
            6 => Call::DeviceGetAttribute {
                attrib: r.i32()?,
                dev: r.i32()?,
            },
            7 => Call::DeviceTotalMem { dev: r.i32()? },
            8 => Call::DeviceGetUuid { dev: r.i32()? },
            9 => Call::PrimaryCtxRetain { dev: r.i32()? },
            10 => Call::PrimaryCtxRelease { dev: r.i32()? },
            11 => Call::CtxCreate {
                flags: r.u32()?,
                dev: r.i32()?,
            },
            12 => Call::CtxDestroy { ctx: r.u64()? },
            13 => Call::CtxSynchronize,
            14 => Call::MemAlloc { size: r.u64()? },
            15 => Call::MemFree { ptr: r.u64()? },
            16 => Call::MemGetInfo,
            17 => {
                let dst = r.u64()?;
                let stream = r.u64()?;
                Call::MemcpyHtoD {
                    dst,
                    stream,
                    data: Payload::get(&mut r)?,
                }
            }
            18 => {
                let src = r.u64()?;
                let len = r.u64()?;
                let stream = r.u64()?;
                let to_shm = match r.u8()? {
                    0 => None,
                    1 => Some(r.u64()?),
                    t => {
                        return Err(IdmError::UnknownTag {
                            what: "option",
                            tag: u32::from(t),
                        });
                    }
                };
                Call::MemcpyDtoH {
                    src,
                    len,
                    to_shm,
                    stream,
                }
            }
            19 => Call::MemcpyDtoD {
                dst: r.u64()?,
                src: r.u64()?,
                len: r.u64()?,
                stream: r.u64()?,
            },
            20 => Call::MemsetD8 {
                dst: r.u64()?,
                value: r.u8()?,
                count: r.u64()?,
                stream: r.u64()?,
            },
            21 => Call::MemsetD32 {
                dst: r.u64()?,
                value: r.u32()?,
                count: r.u64()?,
                stream: r.u64()?,
            },
            22 => Call::ModuleLoadData {
                image: r.bytes()?.to_vec(),
            },
            23 => Call::ModuleUnload { module: r.u64()? },
            24 => Call::ModuleGetFunction {
                module: r.u64()?,
                name: r.string()?,
            },
            25 => Call::ModuleGetGlobal {
                module: r.u64()?,
                name: r.string()?,
            },
            26 => {
                let func = r.u64()?;
                let grid = [r.u32()?, r.u32()?, r.u32()?];
                let block = [r.u32()?, r.u32()?, r.u32()?];
                Call::LaunchKernel {
                    func,
                    grid,
                    block,
                    shared_mem: r.u32()?,
                    stream: r.u64()?,
                    params: r.bytes()?.to_vec(),
                }
            }
            27 => Call::StreamCreate { flags: r.u32()? },
            28 => Call::StreamDestroy { stream: r.u64()? },
            29 => Call::StreamSynchronize { stream: r.u64()? },
            30 => Call::StreamQuery { stream: r.u64()? },
            31 => Call::StreamWaitEvent {
                stream: r.u64()?,
                event: r.u64()?,
                flags: r.u32()?,
            },
            32 => Call::EventCreate { flags: r.u32()? },
            33 => Call::EventDestroy { event: r.u64()? },
            34 => Call::EventRecord {
                event: r.u64()?,
                stream: r.u64()?,
            },
            35 => Call::EventSynchronize { event: r.u64()? },
            36 => Call::EventQuery { event: r.u64()? },
            37 => Call::EventElapsedTime {
                start: r.u64()?,
                end: r.u64()?,
            },
            t => {
                return Err(IdmError::UnknownTag {
                    what: "call",
                    tag: u32::from(t),
                });
            }
        };
        r.finish()?;
        Ok(c)
    }
}

/// The value part of a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    None,
    I32(i32),
    U64(u64),
    Handle(u64),
    MemInfo {
        free: u64,
        total: u64,
    },
    Name(String),
    Uuid([u8; 16]),
    /// A function handle and the parameter layout read with `cuFuncGetParamInfo`.
    Function {
        handle: u64,
        params: Vec<ParamInfo>,
    },
    Global {
        ptr: u64,
        size: u64,
    },
    Data(Payload),
    F32(f32),
}

/// Answer to one [`Call`]: a `CUresult` plus the value (meaningful when `result` is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub result: u32,
    pub reply: Reply,
}

impl Response {
    pub fn ok(reply: Reply) -> Self {
        Self { result: 0, reply }
    }
    pub fn err(result: u32) -> Self {
        Self {
            result,
            reply: Reply::None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.result);
        match &self.reply {
            Reply::None => {
                w.u8(0);
            }
            Reply::I32(v) => {
                w.u8(1).i32(*v);
            }
            Reply::U64(v) => {
                w.u8(2).u64(*v);
            }
            Reply::Handle(v) => {
                w.u8(3).u64(*v);
            }
            Reply::MemInfo { free, total } => {
                w.u8(4).u64(*free).u64(*total);
            }
            Reply::Name(s) => {
                w.u8(5).str(s);
            }
            Reply::Uuid(u) => {
                w.u8(6);
                for b in u {
                    w.u8(*b);
                }
            }
            Reply::Function { handle, params } => {
                w.u8(7).u64(*handle);
                w.u32(u32::try_from(params.len()).unwrap_or(u32::MAX));
                for p in params {
                    w.u32(p.offset).u32(p.size);
                }
            }
            Reply::Global { ptr, size } => {
                w.u8(8).u64(*ptr).u64(*size);
            }
            Reply::Data(p) => {
                w.u8(9);
                p.put(&mut w);
            }
            Reply::F32(v) => {
                w.u8(10).f32(*v);
            }
        }
        w.into_inner()
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let result = r.u32()?;
        let reply = match r.u8()? {
            0 => Reply::None,
            1 => Reply::I32(r.i32()?),
            2 => Reply::U64(r.u64()?),
            3 => Reply::Handle(r.u64()?),
            4 => Reply::MemInfo {
                free: r.u64()?,
                total: r.u64()?,
            },
            5 => Reply::Name(r.string()?),
            6 => {
                let mut u = [0u8; 16];
                for b in u.iter_mut() {
                    *b = r.u8()?;
                }
                Reply::Uuid(u)
            }
            7 => {
                let handle = r.u64()?;
                let n = r.count(8)?;
                let mut params = Vec::with_capacity(n);
                for _ in 0..n {
                    params.push(ParamInfo {
                        offset: r.u32()?,
                        size: r.u32()?,
                    });
                }
                Reply::Function { handle, params }
            }
            8 => Reply::Global {
                ptr: r.u64()?,
                size: r.u64()?,
            },
            9 => Reply::Data(Payload::get(&mut r)?),
            10 => Reply::F32(r.f32()?),
            t => {
                return Err(IdmError::UnknownTag {
                    what: "reply",
                    tag: u32::from(t),
                });
            }
        };
        r.finish()?;
        Ok(Response { result, reply })
    }
}

/// Asynchronous notifications from the proxy (request id 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The tenant's memory quota changed (bytes).
    QuotaChanged { quota: u64 },
    /// The proxy is going away; in-flight work is lost.
    Shutdown { reason: String },
}

impl Event {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Event::QuotaChanged { quota } => {
                w.u16(1).u64(*quota);
            }
            Event::Shutdown { reason } => {
                w.u16(2).str(reason);
            }
        }
        w.into_inner()
    }
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let e = match r.u16()? {
            1 => Event::QuotaChanged { quota: r.u64()? },
            2 => Event::Shutdown {
                reason: r.string()?,
            },
            t => {
                return Err(IdmError::UnknownTag {
                    what: "event",
                    tag: u32::from(t),
                });
            }
        };
        r.finish()?;
        Ok(e)
    }
}

/// First frame of a connection, client → server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub client: String,
}

/// Server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Welcome {
    /// `tenant` is the identity the server derived from the transport, for the client's logs only.
    Accepted {
        version: u16,
        server: String,
        tenant: String,
    },
    Refused {
        reason: String,
    },
}

/// Offer of a shared bulk area; the memfd travels as SCM_RIGHTS with this frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmOffer {
    pub size: u64,
}

/// A decoded frame of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Request(Call),
    Response(Response),
    Event(Event),
    ShmOffer(ShmOffer),
    Goodbye,
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Welcome(_) => Kind::Welcome,
            Message::Request(_) => Kind::Request,
            Message::Response(_) => Kind::Response,
            Message::Event(_) => Kind::Event,
            Message::ShmOffer(_) => Kind::ShmOffer,
            Message::Goodbye => Kind::Goodbye,
        }
    }

    pub fn encode_payload(&self) -> Vec<u8> {
        match self {
            Message::Hello(h) => {
                let mut w = Writer::new();
                w.u16(h.min_version).u16(h.max_version).str(&h.client);
                w.into_inner()
            }
            Message::Welcome(Welcome::Accepted {
                version,
                server,
                tenant,
            }) => {
                let mut w = Writer::new();
                w.u8(0).u16(*version).str(server).str(tenant);
                w.into_inner()
            }
            Message::Welcome(Welcome::Refused { reason }) => {
                let mut w = Writer::new();
                w.u8(1).str(reason);
                w.into_inner()
            }
            Message::Request(c) => c.encode(),
            Message::Response(r) => r.encode(),
            Message::Event(e) => e.encode(),
            Message::ShmOffer(o) => o.size.to_le_bytes().to_vec(),
            Message::Goodbye => Vec::new(),
        }
    }

    pub fn to_frame(&self, request_id: u64) -> Frame {
        Frame::new(self.kind(), request_id, self.encode_payload())
    }

    /// Decodes the payload of `frame` according to its kind.
    pub fn from_frame(frame: &Frame) -> Result<Self> {
        let p = &frame.payload;
        Ok(match frame.kind {
            Kind::Hello => {
                let mut r = Reader::new(p);
                let h = Hello {
                    min_version: r.u16()?,
                    max_version: r.u16()?,
                    client: r.string()?,
                };
                r.finish()?;
                if h.min_version > h.max_version {
                    return Err(IdmError::InvalidField {
                        field: "hello.version",
                        reason: format!("min {} > max {}", h.min_version, h.max_version),
                    });
                }
                Message::Hello(h)
            }
            Kind::Welcome => {
                let mut r = Reader::new(p);
                let w = match r.u8()? {
                    0 => Welcome::Accepted {
                        version: r.u16()?,
                        server: r.string()?,
                        tenant: r.string()?,
                    },
                    1 => Welcome::Refused {
                        reason: r.string()?,
                    },
                    t => {
                        return Err(IdmError::UnknownTag {
                            what: "welcome",
                            tag: u32::from(t),
                        });
                    }
                };
                r.finish()?;
                Message::Welcome(w)
            }
            Kind::Request => Message::Request(Call::decode(p)?),
            Kind::Response => Message::Response(Response::decode(p)?),
            Kind::Event => Message::Event(Event::decode(p)?),
            Kind::ShmOffer => {
                let mut r = Reader::new(p);
                let size = r.u64()?;
                r.finish()?;
                Message::ShmOffer(ShmOffer { size })
            }
            Kind::Goodbye => {
                Reader::new(p).finish()?;
                Message::Goodbye
            }
        })
    }
}

/// Decodes a complete frame (header + payload) from raw bytes: the fuzz target's entry point.
pub fn decode_frame(buf: &[u8]) -> Result<(u64, Message)> {
    let f = Frame::from_bytes(buf)?;
    let m = Message::from_frame(&f)?;
    Ok((f.request_id, m))
}
