"""Two tenants at once through the proxy: own quotas, cross-tenant pointers/handles refused,
over-quota -> CUDA_ERROR_OUT_OF_MEMORY, fresh allocations zeroed after the other tenant freed
data, and killing tenant A mid-run frees its memory (proxy metrics) while B completes."""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS = os.environ.get("METRICS", "http://127.0.0.1:9464/metrics")
QUOTA_MIB = int(os.environ.get("QUOTA_MIB", "1024"))
results = []


def check(name, cond, detail=""):
    results.append((name, bool(cond)))
    print(f"{'PASS' if cond else 'FAIL'} {name} {detail}", flush=True)


class Tenant:
    def __init__(self, name):
        self.name = name
        self.p = subprocess.Popen([sys.executable, os.path.join(HERE, "tenant.py")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1, cwd=HERE)

    def cmd(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline()
        if not out:
            raise RuntimeError(f"tenant {self.name} died on {line!r}")
        return json.loads(out)


def metrics():
    text = urllib.request.urlopen(METRICS, timeout=5).read().decode()
    mem = {m.group(1): int(m.group(2)) for m in re.finditer(r'tessera_vgpu_tenant_memory_bytes\{tenant="(\d+)"\} (\d+)', text)}
    con = {m.group(1): int(m.group(2)) for m in re.finditer(r'tessera_vgpu_tenant_connected\{tenant="(\d+)"\} (\d+)', text)}
    return mem, con, text


a, b = Tenant("A"), Tenant("B")
info = a.cmd("fill secret 64 171")  # 0xAB
mem, con, _ = metrics()
a_id = max((t for t in mem if mem[t] >= 64 << 20 and con.get(t) == 1), key=int)
check("tenant A visible in metrics with its 64 MiB", mem[a_id] >= 64 << 20, f"tenant={a_id} bytes={mem[a_id]}")

r = b.cmd(f"attack {info['ptr']} {info['stream']} {info['event']} {info['function']}")
for k, v in r.items():
    if k != "op":
        check(f"B {k} refused", v != "CUDA_SUCCESS", v)

r = b.cmd(f"alloc {QUOTA_MIB + 1}")
check("B over-quota allocation", r["result"] == "CUDA_ERROR_OUT_OF_MEMORY", r["result"])
r = b.cmd(f"alloc {QUOTA_MIB - 64}")
check("B allocation within its own quota (A holds memory too)", r["result"] == "CUDA_SUCCESS", r["result"])
r = b.cmd("alloc 128")
check("B next allocation over its quota", r["result"] == "CUDA_ERROR_OUT_OF_MEMORY", r["result"])

a.cmd("free secret")
r = b.cmd("quit")
b.p.wait(timeout=30)
b = Tenant("B2")
r = b.cmd("zeros 64")
check("fresh allocation after A freed 0xAB data reads zeros", r["all_zero"], f"nonzero={r['nonzero']}")

a.cmd("spin 512")
time.sleep(1.0)
mem, con, _ = metrics()
check("A holds its spin buffer", mem.get(a_id, 0) >= 512 << 20, f"bytes={mem.get(a_id)}")
b.p.stdin.write("work 150\n")
b.p.stdin.flush()
time.sleep(0.5)
a.p.kill()
a.p.wait()
deadline = time.time() + 20
while time.time() < deadline:
    mem, con, text = metrics()
    if mem.get(a_id) == 0 and con.get(a_id) == 0:
        break
    time.sleep(0.2)
check("killing A frees its memory in the proxy metrics", mem.get(a_id) == 0 and con.get(a_id) == 0,
      f"bytes={mem.get(a_id)} connected={con.get(a_id)}")
out = json.loads(b.p.stdout.readline())
check("B's run completes correctly while A is killed", out.get("ok") is True, json.dumps(out))
b.cmd("quit")
print("TENANTS", "OK" if all(ok for _, ok in results) else "FAILED", f"{sum(ok for _, ok in results)}/{len(results)}")
