"""What a grid point costs on Slurm beyond its own run, and a 2 x 2 grid on Slurm vs the basic launcher.

Needs a running Slurm (bash tests/slurm/start_slurm.sh up, as root). Runs, on the tiny model:
  1. an N-point grid (seed=0..N-1) through hydra/launcher=submitit_slurm, then per job, from sacct and
     the records: submit -> Slurm start (queue, including the wait for a free CPU), dispatch (from the
     later of submit and the moment a CPU came free, i.e. the end of an earlier job, to the start),
     Slurm start -> run started (Python start-up, imports, unpickling, validation), record written ->
     Slurm job end (teardown), and medians of each;
  2. the same 2 x 2 grid (rtn, bits 3,4 x group 32,64) through submitit_slurm and through the basic
     launcher, wall time of each command.

    python benchmarks/slurm_overhead.py [--jobs 8] [--out /tmp/slurm-overhead]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["model=tiny-random", "seqlen=256", "max_eval_tokens=1024"]
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]
GRID_2X2 = ["method=rtn", "bits=3,4", "group_size=32,64"]


def sweep(results_dir: Path, *overrides: str) -> float:
    shutil.rmtree(results_dir, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", "-m", *TINY, *overrides, f"results_dir={results_dir}"],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"sweep failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def records(results_dir: Path) -> list[tuple[dict, float]]:
    """(record, mtime of its file) per run."""
    return [(json.loads(p.read_text()), p.stat().st_mtime) for p in sorted((results_dir / "runs").glob("*.json"))]


def sacct(job_id: str) -> dict[str, float]:
    line = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "Submit,Start,End"],
                          capture_output=True, text=True, check=True).stdout.split()[0]
    return dict(zip(("submit", "start", "end"), (datetime.fromisoformat(t).timestamp() for t in line.split("|"))))


def stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("/tmp/slurm-overhead"))
    args = parser.parse_args()

    wall = sweep(args.out / "overhead", "method=none", "seed=" + ",".join(map(str, range(args.jobs))), *SLURM)
    found = [(record, written, sacct(record["job"]["job_id"])) for record, written in records(args.out / "overhead")]
    ends = [job["end"] for _, _, job in found]
    rows = []
    for record, written, job in found:
        free = max([job["submit"], *(end for end in ends if end <= job["start"])])
        rows.append({"queue_s": job["start"] - job["submit"], "dispatch_s": job["start"] - free,
                     "startup_s": stamp(record["started_at"]) - job["start"],
                     "run_s": written - stamp(record["started_at"]), "teardown_s": job["end"] - written})
    print(f"{len(rows)} jobs through submitit_slurm in {wall:.1f} s (one command, {args.jobs}-point grid)")
    print("per job (s): " + "  ".join(f"{k}" for k in rows[0]))
    for row in rows:
        print("            " + "  ".join(f"{v:>{len(k)}.1f}" for k, v in row.items()))
    medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print("median      " + "  ".join(f"{v:>{len(k)}.1f}" for k, v in medians.items()))
    print(f"median overhead per job: dispatch + start-up {medians['dispatch_s'] + medians['startup_s']:.1f} s, "
          f"record written -> job end {medians['teardown_s']:.1f} s (timestamps: sacct and records, 1 s resolution)")

    slurm = sweep(args.out / "grid-slurm", *GRID_2X2, *SLURM)
    basic = sweep(args.out / "grid-basic", *GRID_2X2)
    print(f"2 x 2 grid wall time: submitit_slurm {slurm:.1f} s, basic launcher {basic:.1f} s, ratio {slurm / basic:.2f}")


if __name__ == "__main__":
    main()
