"""Leaderboard build time and page size: for N synthetic records (tests/synthetic_records.py, the
harness's record format) and for any real results folders given.

    python benchmarks/leaderboard_build.py [--synthetic 1000] [--repeats 3] [RESULTS_DIR...]

Prints, per source, the median wall time of `harness.leaderboard.build` (load + tabulate + render +
write) over the repeats, of each of its stages, and the sizes of the files written.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synthetic_records import grid  # noqa: E402

from harness import leaderboard, leaderboard_page, results, table  # noqa: E402


def measure(name: str, sources: list[str], repeats: int) -> None:
    stages = {"load": [], "tabulate": [], "render": [], "build (all, with writing)": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeats):
            t0 = time.perf_counter()
            df = results.load(sources)
            t1 = time.perf_counter()
            board = table.tabulate(df)
            t2 = time.perf_counter()
            leaderboard_page.render(board, sources, "now")
            t3 = time.perf_counter()
            leaderboard.build(sources, out)
            t4 = time.perf_counter()
            for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[stage].append(seconds)
        sizes = {f.name: f.stat().st_size for f in sorted(Path(out).iterdir())}
    print(f"{name}: {len(board.runs)} ok runs, {len(board.failed)} failed, {len(board.groups)} evaluation settings, "
          f"{len(board.metrics)} scores")
    for stage, seconds in stages.items():
        print(f"  {stage:28s} median {statistics.median(seconds):7.3f} s  (of {repeats}: {', '.join(f'{s:.3f}' for s in seconds)})")
    print("  files: " + ", ".join(f"{n} {s / 1024:,.0f} KiB" for n, s in sizes.items()) + f"; total {sum(sizes.values()) / 1024:,.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dirs", nargs="*")
    parser.add_argument("--synthetic", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for record in grid(args.synthetic):
            results.write(folder, record)
        measure(f"{args.synthetic} synthetic records", [folder], args.repeats)
    if args.results_dirs:
        measure(", ".join(args.results_dirs), args.results_dirs, args.repeats)


if __name__ == "__main__":
    main()
