//! An in-memory stand-in for the CUDA driver, **for logic tests only** (handle tables, quotas,
//! pointer checks, marshalling, teardown). It models unified addressing: any context can reach any
//! allocation, so isolation must come from the session's checks, which is what the tests verify.
//!
//! Module images are text: one `fn <name> <size>[,<size>...]` or `global <name> <size>` per line.
//! The function named `fill` behaves like a kernel `fill(u32* p, u32 value, u32 n)`, so launches
//! have a visible effect.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tessera_idm::{ParamInfo, cu};

use crate::executor::{CuResult, CudaExecutor};

#[derive(Default)]
struct State {
    next: u64,
    mem: BTreeMap<u64, Vec<u8>>,
    modules: HashMap<u64, Vec<(String, Vec<u32>)>>,
    globals: HashMap<(u64, String), u64>,
    functions: HashMap<u64, (String, Vec<ParamInfo>)>,
    contexts: Vec<u64>,
    live: HashMap<u64, &'static str>,
    events: HashMap<u64, u64>,
    tick: u64,
    /// Launch log: (function name, packed params).
    pub launches: Vec<(String, Vec<u8>)>,
}

pub struct TestDouble {
    total: u64,
    st: Mutex<State>,
}

impl TestDouble {
    /// A device with `total` bytes of memory.
    pub fn new(total: u64) -> Self {
        Self {
            total,
            st: Mutex::new(State {
                next: 0x7f00_0000_0000,
                ..Default::default()
            }),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes currently allocated on the "device" by everyone.
    pub fn used(&self) -> u64 {
        self.st().mem.values().map(|v| v.len() as u64).sum()
    }
    /// Contexts alive.
    pub fn contexts(&self) -> usize {
        self.st().contexts.len()
    }
    /// Objects alive (modules, streams, events).
    pub fn live_objects(&self) -> usize {
        self.st().live.len()
    }
    /// Launches so far.
    pub fn launches(&self) -> Vec<(String, Vec<u8>)> {
        self.st().launches.clone()
    }

    fn id(st: &mut State) -> u64 {
        st.next += 0x1_0000;
        st.next
    }

    /// Finds the allocation holding `[ptr, ptr+len)` like a driver with unified addressing would.
    fn locate(st: &mut State, ptr: u64, len: u64) -> CuResult<(u64, usize)> {
        let (start, v) = st.mem.range(..=ptr).next_back().ok_or(cu::INVALID_VALUE)?;
        let off = ptr - start;
        if off + len > v.len() as u64 {
            return Err(cu::INVALID_VALUE);
        }
        Ok((*start, off as usize))
    }

    fn write(&self, ptr: u64, data: &[u8]) -> CuResult<()> {
        let mut st = self.st();
        let (s, o) = Self::locate(&mut st, ptr, data.len() as u64)?;
        let v = st.mem.get_mut(&s).ok_or(cu::INVALID_VALUE)?;
        v[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn read(&self, ptr: u64, out: &mut [u8]) -> CuResult<()> {
        let mut st = self.st();
        let (s, o) = Self::locate(&mut st, ptr, out.len() as u64)?;
        let v = st.mem.get(&s).ok_or(cu::INVALID_VALUE)?;
        out.copy_from_slice(&v[o..o + out.len()]);
        Ok(())
    }

    fn new_obj(&self, kind: &'static str) -> u64 {
        let mut st = self.st();
        let id = Self::id(&mut st);
        st.live.insert(id, kind);
        id
    }

    fn drop_obj(&self, id: u64, kind: &'static str) -> CuResult<()> {
        let mut st = self.st();
        match st.live.get(&id) {
            Some(k) if *k == kind => {
                st.live.remove(&id);
                Ok(())
            }
            _ => Err(cu::INVALID_HANDLE),
        }
    }
}

/// Natural alignment layout of parameter sizes, as a compiler lays out a kernel's parameters.
pub fn layout_of(sizes: &[u32]) -> Vec<ParamInfo> {
    let mut off = 0u32;
    sizes
        .iter()
        .map(|s| {
            let align = (*s).clamp(1, 8);
            off = off.div_ceil(align) * align;
            let p = ParamInfo {
                offset: off,
                size: *s,
            };
            off += s;
            p
        })
        .collect()
}

impl CudaExecutor for TestDouble {
    fn driver_version(&self) -> CuResult<i32> {
        Ok(12080)
    }
    fn device_count(&self) -> CuResult<i32> {
        Ok(1)
    }
    fn device_name(&self, _dev: i32) -> CuResult<String> {
        Ok("Tessera test double".into())
    }
    fn device_attribute(&self, attrib: i32, _dev: i32) -> CuResult<i32> {
        match attrib {
            75 => Ok(9), // compute capability major
            76 => Ok(0),
            1 => Ok(1024),
            _ => Ok(0),
        }
    }
    fn device_total_mem(&self, _dev: i32) -> CuResult<u64> {
        Ok(self.total)
    }
    fn device_uuid(&self, _dev: i32) -> CuResult<[u8; 16]> {
        Ok(*b"tessera-double!!")
    }
    fn ctx_create(&self, _dev: i32) -> CuResult<u64> {
        let mut st = self.st();
        let id = Self::id(&mut st);
        st.contexts.push(id);
        Ok(id)
    }
    fn ctx_destroy(&self, ctx: u64) -> CuResult<()> {
        let mut st = self.st();
        let n = st.contexts.len();
        st.contexts.retain(|c| *c != ctx);
        if st.contexts.len() == n {
            return Err(cu::INVALID_CONTEXT);
        }
        Ok(())
    }
    fn ctx_bind(&self, _ctx: u64) -> CuResult<()> {
        Ok(())
    }
    fn ctx_synchronize(&self) -> CuResult<()> {
        Ok(())
    }
    fn mem_alloc(&self, size: u64) -> CuResult<u64> {
        if self.used() + size > self.total {
            return Err(cu::OUT_OF_MEMORY);
        }
        let mut st = self.st();
        // Leave a gap after each allocation; fill with garbage so scrubbing is observable.
        let p = st.next + 0x1_0000;
        st.next = p + size.div_ceil(0x1_0000) * 0x1_0000 + 0x1_0000;
        st.mem.insert(p, vec![0xa5; size as usize]);
        Ok(p)
    }
    fn mem_free(&self, ptr: u64) -> CuResult<()> {
        self.st()
            .mem
            .remove(&ptr)
            .map(|_| ())
            .ok_or(cu::INVALID_VALUE)
    }
    fn mem_get_info(&self) -> CuResult<(u64, u64)> {
        Ok((self.total - self.used(), self.total))
    }
    fn memcpy_htod(&self, dst: u64, src: &[u8], _s: u64) -> CuResult<()> {
        self.write(dst, src)
    }
    fn memcpy_dtoh(&self, dst: &mut [u8], src: u64, _s: u64) -> CuResult<()> {
        self.read(src, dst)
    }
    fn memcpy_dtod(&self, dst: u64, src: u64, len: u64, _s: u64) -> CuResult<()> {
        let mut tmp = vec![0u8; len as usize];
        self.read(src, &mut tmp)?;
        self.write(dst, &tmp)
    }
    fn memset_d8(&self, dst: u64, value: u8, count: u64, _s: u64) -> CuResult<()> {
        self.write(dst, &vec![value; count as usize])
    }
    fn memset_d32(&self, dst: u64, value: u32, count: u64, _s: u64) -> CuResult<()> {
        let v: Vec<u8> = (0..count).flat_map(|_| value.to_le_bytes()).collect();
        self.write(dst, &v)
    }
    fn module_load(&self, image: &[u8]) -> CuResult<u64> {
        let text = std::str::from_utf8(image).map_err(|_| cu::INVALID_IMAGE)?;
        let mut fns = Vec::new();
        let mut globals = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["fn", name, sizes] => {
                    let s: Result<Vec<u32>, _> = sizes.split(',').map(str::parse).collect();
                    fns.push((name.to_string(), s.map_err(|_| cu::INVALID_IMAGE)?));
                }
                ["fn", name] => fns.push((name.to_string(), Vec::new())),
                ["global", name, size] => globals.push((
                    name.to_string(),
                    size.parse::<u64>().map_err(|_| cu::INVALID_IMAGE)?,
                )),
                _ => return Err(cu::INVALID_IMAGE),
            }
        }
        let m = self.new_obj("module");
        for (name, size) in globals {
            let p = self.mem_alloc(size)?;
            self.st().globals.insert((m, name), p);
        }
        self.st().modules.insert(m, fns);
        Ok(m)
    }
    fn module_unload(&self, module: u64) -> CuResult<()> {
        self.drop_obj(module, "module")?;
        let mut st = self.st();
        st.modules.remove(&module);
        let gs: Vec<(u64, String)> = st
            .globals
            .keys()
            .filter(|k| k.0 == module)
            .cloned()
            .collect();
        for k in gs {
            if let Some(p) = st.globals.remove(&k) {
                st.mem.remove(&p);
            }
        }
        Ok(())
    }
    fn module_get_function(&self, module: u64, name: &str) -> CuResult<(u64, Vec<ParamInfo>)> {
        let sizes = {
            let st = self.st();
            let fns = st.modules.get(&module).ok_or(cu::INVALID_HANDLE)?;
            fns.iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
                .ok_or(cu::NOT_FOUND)?
        };
        let layout = layout_of(&sizes);
        let mut st = self.st();
        let f = Self::id(&mut st);
        st.functions.insert(f, (name.to_owned(), layout.clone()));
        Ok((f, layout))
    }
    fn module_get_global(&self, module: u64, name: &str) -> CuResult<(u64, u64)> {
        let st = self.st();
        let p = *st
            .globals
            .get(&(module, name.to_owned()))
            .ok_or(cu::NOT_FOUND)?;
        let size = st
            .mem
            .get(&p)
            .map(|v| v.len() as u64)
            .ok_or(cu::NOT_FOUND)?;
        Ok((p, size))
    }
    fn launch(
        &self,
        func: u64,
        _grid: [u32; 3],
        _block: [u32; 3],
        _shared_mem: u32,
        _stream: u64,
        params: &[u8],
        layout: &[ParamInfo],
    ) -> CuResult<()> {
        let name = {
            let mut st = self.st();
            let (name, _) = st.functions.get(&func).cloned().ok_or(cu::INVALID_HANDLE)?;
            st.launches.push((name.clone(), params.to_vec()));
            name
        };
        if name == "fill" && layout.len() == 3 {
            let rd = |p: &ParamInfo| {
                let o = p.offset as usize;
                let mut b = [0u8; 8];
                b[..p.size as usize].copy_from_slice(&params[o..o + p.size as usize]);
                u64::from_le_bytes(b)
            };
            let (ptr, value, n) = (rd(&layout[0]), rd(&layout[1]) as u32, rd(&layout[2]));
            // Like a real kernel, it faults on memory it cannot reach.
            self.memset_d32(ptr, value, n, 0)
                .map_err(|_| cu::ILLEGAL_ADDRESS)?;
        }
        Ok(())
    }
    fn stream_create(&self, _flags: u32) -> CuResult<u64> {
        Ok(self.new_obj("stream"))
    }
    fn stream_destroy(&self, stream: u64) -> CuResult<()> {
        self.drop_obj(stream, "stream")
    }
    fn stream_synchronize(&self, _stream: u64) -> CuResult<()> {
        Ok(())
    }
    fn stream_query(&self, _stream: u64) -> CuResult<()> {
        Ok(())
    }
    fn stream_wait_event(&self, _stream: u64, _event: u64, _flags: u32) -> CuResult<()> {
        Ok(())
    }
    fn event_create(&self, _flags: u32) -> CuResult<u64> {
        Ok(self.new_obj("event"))
    }
    fn event_destroy(&self, event: u64) -> CuResult<()> {
        self.drop_obj(event, "event")
    }
    fn event_record(&self, event: u64, _stream: u64) -> CuResult<()> {
        let mut st = self.st();
        st.tick += 1;
        let t = st.tick;
        st.events.insert(event, t);
        Ok(())
    }
    fn event_synchronize(&self, _event: u64) -> CuResult<()> {
        Ok(())
    }
    fn event_query(&self, _event: u64) -> CuResult<()> {
        Ok(())
    }
    /// One millisecond per record in between.
    fn event_elapsed_ms(&self, start: u64, end: u64) -> CuResult<f32> {
        let st = self.st();
        let a = st.events.get(&start).ok_or(cu::INVALID_HANDLE)?;
        let b = st.events.get(&end).ok_or(cu::INVALID_HANDLE)?;
        Ok(*b as f32 - *a as f32)
    }
}
