"""Compute-share probe: launches the same busy kernel back to back for SECONDS and prints how many
completed per second (plain cuda-python)."""
import json
import sys
import time

import numpy as np
from cuda.bindings import driver as cu

from cudalib import args_of, ck, compile_module, setup

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
dev, ctx = setup(use_ctx_create=False)
module, _ = compile_module(dev)
spin = ck(cu.cuModuleGetFunction(module, b"spin"))
stream = ck(cu.cuStreamCreate(0))
n = 1 << 22
p = ck(cu.cuMemAlloc(n * 4))
keep, ptrs = args_of((int(p), np.uint64), (n, np.uint32), (4000, np.uint32))
done = 0
t0 = time.time()
while time.time() - t0 < seconds:
    for _ in range(4):
        ck(cu.cuLaunchKernel(spin, n // 256, 1, 1, 256, 1, 1, 0, stream, ptrs.ctypes.data, 0))
    ck(cu.cuStreamSynchronize(stream))
    done += 4
dt = time.time() - t0
print(json.dumps({"kernels_per_s": done / dt}))
