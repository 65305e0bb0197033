"""Time `results.load` on many records spread over several results folders (hosts).

Writes N synthetic records (tests/record_folders.py: the real record fixture with other seeds) into
a temporary folder per host, then loads them all REPEATS times and prints the median wall and CPU time (wall time on a shared
machine includes waiting for a core).

    python benchmarks/results_load.py                # 1,000 records over 4 folders
    python benchmarks/results_load.py --records 10000 --hosts 8
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import results  # noqa: E402
from record_folders import hosts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        folders = hosts(Path(root), args.records, args.hosts)
        size = sum(p.stat().st_size for f in folders for p in (f / results.RUNS).iterdir())
        times, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            table = results.load(folders)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    assert len(table) == args.records
    print(f"{args.records} records ({size / 2**20:.1f} MiB of JSON) in {args.hosts} folders -> {table.shape[0]} rows x {table.shape[1]} columns")
    print(f"results.load: median {statistics.median(times) * 1000:.0f} ms over {args.repeats} loads "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); CPU time median {statistics.median(cpu) * 1000:.0f} ms "
          f"({statistics.median(cpu) / args.records * 1e6:.0f} us per record)")


if __name__ == "__main__":
    main()
