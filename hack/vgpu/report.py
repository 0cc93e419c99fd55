"""Prints forwarded-vs-native ratios from two bench.py outputs."""
import json
import sys

nat = json.load(open(sys.argv[1]))
fwd = json.load(open(sys.argv[2]))
print("| metric | native | stand-in + proxy | ratio (stand-in / native) |")
print("|---|---|---|---|")
for k in ("noop_stream_query_us", "noop_driver_version_us", "python_floor_ctx_get_current_us"):
    for i, q in enumerate(("p50", "p99")):
        n, f = nat[k][i], fwd[k][i]
        print(f"| {k} {q} (µs) | {n:.2f} | {f:.2f} | {f / n:.1f}x |")
for k in nat["copy_GBps"]:
    n, f = nat["copy_GBps"][k], fwd["copy_GBps"][k]
    d, size = k.split("_")
    print(f"| memcpy {d} {int(size) >> 10} KiB (GB/s) | {n:.2f} | {f:.2f} | {f / n:.2f}x |")
n, f = nat["launches_per_s"], fwd["launches_per_s"]
print(f"| kernel launches/s | {n:.0f} | {f:.0f} | {f / n:.2f}x (overhead {n / f:.1f}x) |")
