"""The batch-1 integer GEMV under Nsight Compute: the program ncu profiles, and the summary of its report.

    ncu --profile-from-start off --set full --clock-control none -k regex:_gemv_kernel -o REP \\
        python benchmarks/gemv_profile.py run [--shape 14336x4096] [--bits 4,3,2] [--group-size 128]
    ncu --import REP.ncu-rep --page raw --csv > REP.csv && python benchmarks/gemv_profile.py summary REP.csv

`run` builds each layer (current kernels, then the frozen KERNEL_VERSION 2 for comparison), tunes it
eagerly (outside the profiled range), then launches each tuned GEMV once between
cudaProfilerStart/Stop, in the order it prints. `summary` prints, per profiled kernel in that order:
duration, DRAM throughput (% of peak and GB/s), issue slots busy, achieved occupancy, registers,
executed instructions per weight (warp instructions x 32 / (N K)), and the top warp stall reasons
(cycles per issued instruction).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KEYS = [  # (label, raw metric)
    ("time us", "gpu__time_duration.sum"),
    ("DRAM % peak", "dram__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("DRAM read GB/s", "dram__bytes_read.sum.per_second"),
    ("issue slots busy %", "sm__inst_issued.avg.pct_of_peak_sustained_active"),
    ("issue active %", "smsp__issue_active.avg.pct_of_peak_sustained_active"),
    ("occupancy %", "sm__warps_active.avg.pct_of_peak_sustained_active"),
    ("regs", "launch__registers_per_thread"),
    ("grid", "launch__grid_size"),
    ("block", "launch__block_size"),
]
STALL = "smsp__average_warps_issue_stalled_"


def run(args) -> None:
    import torch

    import intq_v2
    from gemv_bench import fitted

    from harness.kernels import intq

    n, k = map(int, args.shape.split("x"))
    launches = []
    for name, module in (("v3", intq), ("v2", intq_v2)):
        for bits in args.bits:
            codes, scale, offset = fitted(bits, n, k, args.group_size, n + k + bits)
            layer = module.PackedLinear(codes, scale, offset, module.Layout.of(bits, k, args.group_size))
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            layer(x)  # tune
            launches.append((f"{name} W{bits} {n}x{k} {module.tuned_choice(1, layer)}", layer, x))
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for label, layer, x in launches:
        layer(x)
        print("profiled:", label, flush=True)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return float("nan")


def summary(args) -> None:
    with open(args.csv) as fh:
        rows = [r for r in csv.reader(fh) if r]
    header = rows[0]
    units = rows[1] if len(rows) > 1 and not any(c.isdigit() for c in rows[1][0]) else None
    data = rows[2:] if units else rows[1:]
    col = {name: i for i, name in enumerate(header)}
    name_col = col.get("Kernel Name", col.get("kernel_name"))
    for r in data:
        if name_col is not None and "_gemv_kernel" not in r[name_col]:
            continue
        cells = []
        for label, metric in KEYS:
            if metric in col:
                value = number(r[col[metric]])
                unit = units[col[metric]] if units else ""
                if metric == "gpu__time_duration.sum":
                    value = value / 1e3 if unit in ("ns", "nsecond") else value * (1e-3 if unit == "usecond" else 1)
                if metric.endswith("per_second"):
                    scale = {"byte/second": 1e-9, "Kbyte/second": 1e-6, "Mbyte/second": 1e-3, "Gbyte/second": 1, "Tbyte/second": 1e3}
                    value *= scale.get(unit, float("nan"))
                cells.append(f"{label} {value:.1f}")
        if args.weights and "smsp__inst_executed.sum" in col:
            cells.append(f"instr/weight {number(r[col['smsp__inst_executed.sum']]) * 32 / args.weights:.2f}")
        stalls = sorted(((number(r[i]), h[len(STALL):].replace("_per_issue_active.ratio", "")) for h, i in col.items()
                         if h.startswith(STALL) and h.endswith("_per_issue_active.ratio")), reverse=True)
        cells.append("stalls (cycles/issue): " + ", ".join(f"{n} {v:.2f}" for v, n in stalls[:5] if v == v))
        print(" | ".join(cells))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--shape", default="14336x4096")
    p.add_argument("--bits", type=lambda s: [int(v) for v in s.split(",")], default=[4, 3, 2])
    p.add_argument("--group-size", type=int, default=128)
    p = sub.add_parser("summary")
    p.add_argument("csv")
    p.add_argument("--weights", type=float, default=14336 * 4096, help="N * K of the profiled shape")
    args = parser.parse_args(argv)
    run(args) if args.cmd == "run" else summary(args)


if __name__ == "__main__":
    main()
