"""An ordinary cuda-python program: NVRTC compile, cuModuleLoadData, launch with scalar and pointer
arguments on a stream bracketed by events, memset/DtoD, copy back and check. It prints only
deterministic lines on stdout so two runs (real libcuda / stand-in) can be compared with diff."""
import sys

import numpy as np
from cuda.bindings import driver as cu

from cudalib import args_of, ck, compile_module, digest, loaded_libcuda, setup

print("libcuda in use:", loaded_libcuda(), file=sys.stderr)
dev, ctx = setup(use_ctx_create=True)
name = ck(cu.cuDeviceGetName(256, dev))
module, cc = compile_module(dev)
saxpy = ck(cu.cuModuleGetFunction(module, b"saxpy"), "cuModuleGetFunction")

n = (1 << 22) + 17
rng = np.random.default_rng(7)
x = rng.standard_normal(n).astype(np.float32)
y = rng.standard_normal(n).astype(np.float32)
out = np.zeros(n, dtype=np.float32)
nb = x.nbytes
dx, dy, dout, dtmp = (ck(cu.cuMemAlloc(nb), "cuMemAlloc") for _ in range(4))
stream = ck(cu.cuStreamCreate(0), "cuStreamCreate")
ev0 = ck(cu.cuEventCreate(0), "cuEventCreate")
ev1 = ck(cu.cuEventCreate(0), "cuEventCreate")

ck(cu.cuMemcpyHtoDAsync(dx, x.ctypes.data, nb, stream), "cuMemcpyHtoDAsync")
ck(cu.cuMemcpyHtoD(dy, y.ctypes.data, nb), "cuMemcpyHtoD")
ck(cu.cuEventRecord(ev0, stream), "cuEventRecord")
keep, ptrs = args_of((2.5, np.float32), (int(dx), np.uint64), (int(dy), np.uint64), (int(dout), np.uint64), (n, np.uint32))
ck(cu.cuLaunchKernel(saxpy, (n + 255) // 256, 1, 1, 256, 1, 1, 0, stream, ptrs.ctypes.data, 0), "cuLaunchKernel")
ck(cu.cuEventRecord(ev1, stream), "cuEventRecord")
ck(cu.cuMemcpyDtoHAsync(out.ctypes.data, dout, nb, stream), "cuMemcpyDtoHAsync")
ck(cu.cuStreamSynchronize(stream), "cuStreamSynchronize")
ms = ck(cu.cuEventElapsedTime(ev0, ev1), "cuEventElapsedTime")
expect = np.float32(2.5) * x + y
err = float(np.max(np.abs(out - expect)))

# memset D32 (1.0f) and D8, DtoD, copy back.
ck(cu.cuMemsetD32(dtmp, 0x3F800000, n), "cuMemsetD32")
ck(cu.cuMemcpyDtoD(dout, dtmp, nb), "cuMemcpyDtoD")
ones = np.empty(n, dtype=np.float32)
ck(cu.cuMemcpyDtoH(ones.ctypes.data, dout, nb), "cuMemcpyDtoH")
ck(cu.cuMemsetD8(dtmp, 0x7F, 1000), "cuMemsetD8")
b8 = np.empty(1000, dtype=np.uint8)
ck(cu.cuMemcpyDtoH(b8.ctypes.data, dtmp, 1000), "cuMemcpyDtoH")
total = ck(cu.cuDeviceTotalMem(dev))
free, tot2 = ck(cu.cuMemGetInfo())
drv = ck(cu.cuDriverGetVersion())
ok_name, ename = cu.cuGetErrorName(cu.CUresult.CUDA_ERROR_OUT_OF_MEMORY)

print(f"device-name-nonempty {bool(name.strip(chr(0).encode()))}")
print(f"compute-capability {cc[0]}.{cc[1]}")
print(f"saxpy n={n} max_abs_err={err:.3e} ok={err < 1e-5} out_sha={digest(out)}")
print(f"memset+dtod ones_ok={bool(np.all(ones == 1.0))} d8_ok={bool(np.all(b8 == 0x7F))}")
print(f"events elapsed_positive={ms > 0}")
print(f"meminfo sane={0 < free <= tot2} totalmem_positive={total > 0} driver_version_positive={drv > 0}")
print(f"error-name {ename.decode()}")
for p in (dx, dy, dout, dtmp):
    ck(cu.cuMemFree(p), "cuMemFree")
ck(cu.cuEventDestroy(ev0))
ck(cu.cuEventDestroy(ev1))
ck(cu.cuStreamDestroy(stream))
ck(cu.cuModuleUnload(module))
ck(cu.cuCtxDestroy(ctx))
print("APP OK" if err < 1e-5 and np.all(ones == 1.0) and np.all(b8 == 0x7F) else "APP FAILED")
print(f"kernel ms {ms:.3f}", file=sys.stderr)
