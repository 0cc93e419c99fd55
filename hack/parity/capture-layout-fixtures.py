#!/usr/bin/env python3
"""Capture small layout fixtures from the kernel-made arrays cached by `make e2e-md`.

For every array, the first 16 bytes of each member's chunk in the first 2*n rows (n = members), with
the array's geometry: parity/tests/fixtures/layout-<name>.txt. tests/kernel_layouts.rs regenerates the
payload from its seed and checks that Tessera's placement puts exactly these bytes there (data chunks,
P and Q). Usage: capture-layout-fixtures.py CACHE_DIR (the e2e-md-<hash> folder) OUT_DIR
"""
import json, os, re, subprocess, sys

cache, out = sys.argv[1], sys.argv[2]
raid = os.environ.get("RAID", "target/release/tessera-raid")
log = open(os.path.join(cache, "console.log")).read()
guest = open(os.path.join(os.path.dirname(__file__), "guest-md.sh")).read()
for m in re.finditer(r"VMTEST: array (\d+) (\S+) size (\d+)", log):
    j, name = int(m.group(1)), m.group(2)
    n = int(re.search(rf"^{re.escape(name)} .* (\d+)$", guest, re.M).group(1))
    members = [os.path.join(cache, "members", f"{name}-{i}.img") for i in range(n)]
    sb = json.loads(subprocess.check_output([raid, "md", "examine", "--json", *members]))
    s0 = sb[0]["superblock"]
    rows, chunk = 2 * n, s0["chunk_bytes"]
    lines = [f"# kernel-made {name}: level {s0['level']} layout {s0['layout']} chunk {chunk} disks {n} "
             f"pattern_offset {j * 2 * 1048576} seed 20261121",
             "# role row first-16-bytes-of-chunk"]
    for i, path in enumerate(members):
        doff = sb[i]["superblock"]["data_offset"]
        role = sb[i]["superblock"]["role"]
        with open(path, "rb") as f:
            for r in range(rows):
                f.seek(doff + r * chunk)
                lines.append(f"{role} {r} {f.read(16).hex()}")
    with open(os.path.join(out, f"layout-{name}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", name)

# LVM raid6 (dm-raid, layout raid6_zr = md layout 8) on disks 6..11: no md superblock; the rimage
# offsets come from the guest's dmsetup table lines.
m = re.search(r"VMTEST: lvm (\d+) raid6_zr size (\d+)", log)
starts = {int(a): int(b) * 512 for a, b in re.findall(r"VMTEST: rimage (\d+) pv \S+ start (\d+)", log)}
if m and len(starts) == 6:
    j, n, chunk = int(m.group(1)), 6, 65536
    lines = [f"# kernel-made lvm-raid6_zr: level 6 layout 8 chunk {chunk} disks {n} "
             f"pattern_offset {j * 2 * 1048576} seed 20261121",
             "# role row first-16-bytes-of-chunk"]
    for i in range(n):
        with open(os.path.join(cache, f"disk{6 + i}.img"), "rb") as f:
            for r in range(2 * n):
                f.seek(starts[i] + r * chunk)
                lines.append(f"{i} {r} {f.read(16).hex()}")
    with open(os.path.join(out, "layout-lvm-raid6_zr.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote lvm-raid6_zr")
