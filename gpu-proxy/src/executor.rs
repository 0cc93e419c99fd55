//! The seam between tenant logic and the CUDA driver. [`crate::cuda::CudaDriver`] implements it
//! with the real driver; [`crate::double::TestDouble`] implements it in memory for logic tests.
//!
//! All handles and device pointers are raw `u64` values of the driver; errors are `CUresult`
//! codes. Methods are called from the connection thread of one tenant after [`CudaExecutor::ctx_bind`].

use tessera_idm::ParamInfo;

/// `Err` is a `CUresult` code (never 0).
pub type CuResult<T> = std::result::Result<T, u32>;

pub trait CudaExecutor: Send + Sync {
    fn driver_version(&self) -> CuResult<i32>;
    fn device_count(&self) -> CuResult<i32>;
    fn device_name(&self, dev: i32) -> CuResult<String>;
    fn device_attribute(&self, attrib: i32, dev: i32) -> CuResult<i32>;
    fn device_total_mem(&self, dev: i32) -> CuResult<u64>;
    fn device_uuid(&self, dev: i32) -> CuResult<[u8; 16]>;

    /// Creates a fresh context for one tenant (so the GPU MMU separates tenants).
    fn ctx_create(&self, dev: i32) -> CuResult<u64>;
    fn ctx_destroy(&self, ctx: u64) -> CuResult<()>;
    /// Makes `ctx` current on the calling thread.
    fn ctx_bind(&self, ctx: u64) -> CuResult<()>;
    fn ctx_synchronize(&self) -> CuResult<()>;

    fn mem_alloc(&self, size: u64) -> CuResult<u64>;
    fn mem_free(&self, ptr: u64) -> CuResult<()>;
    fn mem_get_info(&self) -> CuResult<(u64, u64)>;
    /// Host → device. Returns only once `src` may be reused (ordered on `stream`).
    fn memcpy_htod(&self, dst: u64, src: &[u8], stream: u64) -> CuResult<()>;
    /// Device → host. Returns once `dst` holds the data (ordered on `stream`).
    fn memcpy_dtoh(&self, dst: &mut [u8], src: u64, stream: u64) -> CuResult<()>;
    fn memcpy_dtod(&self, dst: u64, src: u64, len: u64, stream: u64) -> CuResult<()>;
    fn memset_d8(&self, dst: u64, value: u8, count: u64, stream: u64) -> CuResult<()>;
    fn memset_d32(&self, dst: u64, value: u32, count: u64, stream: u64) -> CuResult<()>;

    fn module_load(&self, image: &[u8]) -> CuResult<u64>;
    fn module_unload(&self, module: u64) -> CuResult<()>;
    /// The function and its parameter layout (`cuFuncGetParamInfo`).
    fn module_get_function(&self, module: u64, name: &str) -> CuResult<(u64, Vec<ParamInfo>)>;
    fn module_get_global(&self, module: u64, name: &str) -> CuResult<(u64, u64)>;
    /// Launches with parameters packed per `layout` in `params`.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        func: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_mem: u32,
        stream: u64,
        params: &[u8],
        layout: &[ParamInfo],
    ) -> CuResult<()>;

    fn stream_create(&self, flags: u32) -> CuResult<u64>;
    fn stream_destroy(&self, stream: u64) -> CuResult<()>;
    fn stream_synchronize(&self, stream: u64) -> CuResult<()>;
    fn stream_query(&self, stream: u64) -> CuResult<()>;
    fn stream_wait_event(&self, stream: u64, event: u64, flags: u32) -> CuResult<()>;

    fn event_create(&self, flags: u32) -> CuResult<u64>;
    fn event_destroy(&self, event: u64) -> CuResult<()>;
    fn event_record(&self, event: u64, stream: u64) -> CuResult<()>;
    fn event_synchronize(&self, event: u64) -> CuResult<()>;
    fn event_query(&self, event: u64) -> CuResult<()>;
    fn event_elapsed_ms(&self, start: u64, end: u64) -> CuResult<f32>;

    /// Pins a host range for faster DMA (the memfd bulk area). Optional.
    fn host_register(&self, _ptr: *const u8, _len: usize) -> CuResult<()> {
        Ok(())
    }
    fn host_unregister(&self, _ptr: *const u8) -> CuResult<()> {
        Ok(())
    }
}
