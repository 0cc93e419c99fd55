"""One tenant process of the two-tenant test (plain cuda-python; run with the stand-in libcuda).
Reads commands on stdin, answers one JSON line per command on stdout."""
import json
import sys
import time

import numpy as np
from cuda.bindings import driver as cu

from cudalib import CudaError, args_of, ck, compile_module, setup

MIB = 1 << 20
dev, ctx = setup(use_ctx_create=False)
module, _ = compile_module(dev)
saxpy = ck(cu.cuModuleGetFunction(module, b"saxpy"))
spin = ck(cu.cuModuleGetFunction(module, b"spin"))
stream = ck(cu.cuStreamCreate(0))
event = ck(cu.cuEventCreate(0))
bufs = {}


def say(**kw):
    print(json.dumps(kw), flush=True)


def code(f):
    """Runs f; returns the CUresult name (CUDA_SUCCESS when it worked)."""
    try:
        f()
        return "CUDA_SUCCESS"
    except CudaError as e:
        return e.err.name if hasattr(e.err, "name") else str(e.err)


def saxpy_check(n=1 << 20):
    x = np.arange(n, dtype=np.float32)
    y = np.ones(n, dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    d = [ck(cu.cuMemAlloc(x.nbytes)) for _ in range(3)]
    ck(cu.cuMemcpyHtoD(d[0], x.ctypes.data, x.nbytes))
    ck(cu.cuMemcpyHtoD(d[1], y.ctypes.data, y.nbytes))
    keep, ptrs = args_of((3.0, np.float32), (int(d[0]), np.uint64), (int(d[1]), np.uint64), (int(d[2]), np.uint64), (n, np.uint32))
    ck(cu.cuLaunchKernel(saxpy, (n + 255) // 256, 1, 1, 256, 1, 1, 0, stream, ptrs.ctypes.data, 0))
    ck(cu.cuMemcpyDtoHAsync(out.ctypes.data, d[2], out.nbytes, stream))
    ck(cu.cuStreamSynchronize(stream))
    for p in d:
        ck(cu.cuMemFree(p))
    return bool(np.all(out == 3.0 * x + 1.0))


for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    op = cmd[0]
    if op == "fill":  # fill NAME MiB BYTE: allocate and fill with a byte pattern
        p = ck(cu.cuMemAlloc(int(cmd[2]) * MIB))
        ck(cu.cuMemsetD8(p, int(cmd[3]), int(cmd[2]) * MIB))
        ck(cu.cuCtxSynchronize())
        bufs[cmd[1]] = p
        say(op=op, ptr=int(p), stream=int(stream), event=int(event), function=int(saxpy))
    elif op == "free":
        ck(cu.cuMemFree(bufs.pop(cmd[1])))
        say(op=op)
    elif op == "alloc":  # alloc MiB: result code only
        r = cu.cuMemAlloc(int(cmd[1]) * MIB)
        if r[0] == cu.CUresult.CUDA_SUCCESS:
            bufs[f"a{len(bufs)}"] = r[1]
        say(op=op, result=r[0].name)
    elif op == "zeros":  # zeros MiB: a fresh allocation must read as zeros
        n = int(cmd[1]) * MIB
        p = ck(cu.cuMemAlloc(n))
        host = np.full(n, 0x55, dtype=np.uint8)
        ck(cu.cuMemcpyDtoH(host.ctypes.data, p, n))
        ck(cu.cuMemFree(p))
        say(op=op, all_zero=bool(np.all(host == 0)), nonzero=int(np.count_nonzero(host)))
    elif op == "attack":  # attack PTR STREAM EVENT FUNCTION: use another tenant's pointer/handles
        ptr, st, ev, fn = (int(v) for v in cmd[1:5])
        host = np.zeros(4096, dtype=np.uint8)
        own = ck(cu.cuMemAlloc(4096))
        keep, ptrs = args_of((1.0, np.float32), (ptr, np.uint64), (ptr, np.uint64), (ptr, np.uint64), (16, np.uint32))
        res = {
            "dtoh_from_foreign_ptr": code(lambda: ck(cu.cuMemcpyDtoH(host.ctypes.data, ptr, 4096))),
            "htod_to_foreign_ptr": code(lambda: ck(cu.cuMemcpyHtoD(ptr, host.ctypes.data, 4096))),
            "memset_foreign_ptr": code(lambda: ck(cu.cuMemsetD8(ptr, 0, 4096))),
            "dtod_from_foreign_ptr": code(lambda: ck(cu.cuMemcpyDtoD(own, ptr, 4096))),
            "free_foreign_ptr": code(lambda: ck(cu.cuMemFree(ptr))),
            "sync_foreign_stream": code(lambda: ck(cu.cuStreamSynchronize(cu.CUstream(st)))),
            "record_foreign_event": code(lambda: ck(cu.cuEventRecord(cu.CUevent(ev), stream))),
            "launch_foreign_function": code(lambda: ck(cu.cuLaunchKernel(cu.CUfunction(fn), 1, 1, 1, 1, 1, 1, 0, stream, ptrs.ctypes.data, 0))),
            # Launches are asynchronous: the error may surface at the next synchronisation.
            "launch_own_kernel_with_foreign_ptr": code(lambda: (ck(cu.cuLaunchKernel(saxpy, 1, 1, 1, 16, 1, 1, 0, stream, ptrs.ctypes.data, 0)), ck(cu.cuStreamSynchronize(stream)))),
        }
        ck(cu.cuMemFree(own))
        say(op=op, **res)
    elif op == "spin":  # spin MiB: allocate and keep the GPU busy until killed
        n = int(cmd[1]) * MIB // 4
        p = ck(cu.cuMemAlloc(n * 4))
        keep, ptrs = args_of((int(p), np.uint64), (n, np.uint32), (2000, np.uint32))
        say(op=op, started=True)
        i = 0
        while True:
            ck(cu.cuLaunchKernel(spin, (n + 255) // 256, 1, 1, 256, 1, 1, 0, stream, ptrs.ctypes.data, 0))
            i += 1
            if i % 8 == 0:
                ck(cu.cuStreamSynchronize(stream))
    elif op == "work":  # work N: N saxpy rounds, each checked
        t = time.time()
        good = all(saxpy_check() for _ in range(int(cmd[1])))
        say(op=op, ok=good, seconds=round(time.time() - t, 2))
    elif op == "quit":
        say(op=op)
        break
