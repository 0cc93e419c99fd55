"""Micro-benchmarks of the driver API as a client sees it (run once on the real libcuda and once
on the stand-in; report.py prints the ratios). Prints one JSON object."""
import json
import sys
import time

import numpy as np
from cuda.bindings import driver as cu

from cudalib import ck, compile_module, setup

dev, ctx = setup(use_ctx_create=False)
module, _ = compile_module(dev)
empty = ck(cu.cuModuleGetFunction(module, b"empty"))
stream = ck(cu.cuStreamCreate(0))
res = {}


def lat(f, n):
    t = np.empty(n, dtype=np.int64)
    for i in range(n):
        a = time.perf_counter_ns()
        f()
        t[i] = time.perf_counter_ns() - a
    return float(np.percentile(t, 50)) / 1e3, float(np.percentile(t, 99)) / 1e3


for _ in range(1000):
    cu.cuStreamQuery(stream)
res["noop_stream_query_us"] = lat(lambda: cu.cuStreamQuery(stream), 20000)
res["noop_driver_version_us"] = lat(lambda: cu.cuDriverGetVersion(), 20000)
res["python_floor_ctx_get_current_us"] = lat(lambda: cu.cuCtxGetCurrent(), 20000)

copies = {}
for size in [4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20]:
    host = np.ones(size, dtype=np.uint8)
    d = ck(cu.cuMemAlloc(size))
    reps = 50 if size <= 1 << 20 else (10 if size <= 64 << 20 else 4)
    for direction in ("htod", "dtoh"):
        f = (lambda: ck(cu.cuMemcpyHtoD(d, host.ctypes.data, size))) if direction == "htod" else (lambda: ck(cu.cuMemcpyDtoH(host.ctypes.data, d, size)))
        f()
        ts = []
        for _ in range(reps):
            a = time.perf_counter()
            f()
            ts.append(time.perf_counter() - a)
        copies[f"{direction}_{size}"] = size / float(np.median(ts)) / 1e9
    ck(cu.cuMemFree(d))
res["copy_GBps"] = copies

n = 20000
for _ in range(100):
    ck(cu.cuLaunchKernel(empty, 1, 1, 1, 32, 1, 1, 0, stream, 0, 0))
ck(cu.cuStreamSynchronize(stream))
a = time.perf_counter()
for _ in range(n):
    cu.cuLaunchKernel(empty, 1, 1, 1, 32, 1, 1, 0, stream, 0, 0)
ck(cu.cuStreamSynchronize(stream))
res["launches_per_s"] = n / (time.perf_counter() - a)
print(json.dumps(res))
