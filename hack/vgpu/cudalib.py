"""Helpers shared by the vGPU acceptance programs: plain cuda-python (cuda.bindings), no Tessera code."""
import hashlib
import sys

import numpy as np
from cuda.bindings import driver as cu
from cuda.bindings import nvrtc

SAXPY = rb"""
extern "C" __global__ void saxpy(float a, const float* x, const float* y, float* out, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a * x[i] + y[i];
}
extern "C" __global__ void spin(float* p, unsigned n, unsigned rounds) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { float v = p[i]; for (unsigned r = 0; r < rounds; r++) v = v * 0.999f + 1.0f; p[i] = v; }
}
extern "C" __global__ void empty() {}
"""


class CudaError(RuntimeError):
    def __init__(self, err, what):
        self.err = err
        super().__init__(f"{what}: {err}")


def ck(r, what="call"):
    err = r[0]
    if isinstance(err, cu.CUresult) and err != cu.CUresult.CUDA_SUCCESS:
        raise CudaError(err, what)
    if isinstance(err, nvrtc.nvrtcResult) and err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CudaError(err, what)
    if len(r) == 1:
        return None
    return r[1] if len(r) == 2 else r[1:]


def loaded_libcuda():
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libcuda" in line}
    return ",".join(sorted(paths)) or "?"


def setup(use_ctx_create=True):
    ck(cu.cuInit(0), "cuInit")
    dev = ck(cu.cuDeviceGet(0), "cuDeviceGet")
    if use_ctx_create:
        try:
            ctx = ck(cu.cuCtxCreate(None, 0, dev), "cuCtxCreate")
        except TypeError:  # cuda-python before 12.5: cuCtxCreate(flags, dev)
            ctx = ck(cu.cuCtxCreate(0, dev), "cuCtxCreate")
    else:
        ctx = ck(cu.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        ck(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    return dev, ctx


def compile_module(dev):
    A = cu.CUdevice_attribute
    major = ck(cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
    minor = ck(cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))
    prog = ck(nvrtc.nvrtcCreateProgram(SAXPY, b"k.cu", 0, [], []), "nvrtcCreateProgram")
    opts = [f"--gpu-architecture=compute_{major}{minor}".encode()]
    try:
        ck(nvrtc.nvrtcCompileProgram(prog, len(opts), opts), "nvrtcCompileProgram")
    except CudaError:
        size = ck(nvrtc.nvrtcGetProgramLogSize(prog))
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        print(log.decode(errors="replace"), file=sys.stderr)
        raise
    size = ck(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
    ptx = b" " * size
    ck(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
    image = np.char.array(ptx)
    module = ck(cu.cuModuleLoadData(image.ctypes.data), "cuModuleLoadData")
    return module, (major, minor)


def args_of(*vals):
    """Kernel argument array: one pointer per argument, each to the argument's value."""
    keep = [np.array([v], dtype=t) for v, t in vals]
    ptrs = np.array([a.ctypes.data for a in keep], dtype=np.uint64)
    return keep, ptrs


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
