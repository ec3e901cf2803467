"""Turn a pytest-benchmark JSON file into the markdown ratio table of benchmarks/README.md.

    python benchmarks/report.py out/kernels.json [more.json ...]

For every benchmark group it pairs the ``roiret`` entry with its peer (``extra_info.lib``)
and prints median times and the speed ratio peer / roiret (> 1: roiret is faster).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def main(paths):
    groups = defaultdict(dict)
    machine = None
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        machine = machine or data.get("machine_info", {})
        for b in data["benchmarks"]:
            info = b.get("extra_info", {})
            groups[b["group"]][info.get("lib", b["name"])] = (b["stats"]["median"], info)
    print("| case | roiret | peer | peer time | speed-up | notes |")
    print("|---|---|---|---|---|---|")
    for group in sorted(groups):
        entries = groups[group]
        for lib in sorted(k for k in entries if k.startswith("roiret")):  # roiret, roiret-2threads, ...
            print_rows(group, lib, entries)
    if machine:
        cpu = machine.get("cpu", {}).get("brand_raw", "?")
        print(f"\nMachine: {cpu}, {machine.get('cpu', {}).get('count', '?')} logical CPUs; medians.")


def print_rows(group, lib, entries):
    t, info = entries[lib]
    peers = info.get("peer")
    for peer in [peers] if isinstance(peers, str) else peers or []:
        if peer not in entries:
            continue
        tp, pinfo = entries[peer]
        notes = [] if lib == "roiret" else [lib]
        if "simd" in info:
            notes.append(f"SIMD {info['simd']}")
        if "bytes_per_posting" in info:
            notes.append(f"bytes/posting {info['bytes_per_posting']:.2f} vs {pinfo['bytes_per_posting']:.2f}")
        if "postings_scanned" in info:
            notes.append(f"{info['postings_scanned']:,} postings scanned")
        print(f"| {group} | {fmt_time(t)} | {peer} | {fmt_time(tp)} | **{tp / t:.2f}x** | {'; '.join(notes)} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["out/kernels.json"])
