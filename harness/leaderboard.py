"""Build the leaderboard of one or more results folders:

    python -m harness.leaderboard RESULTS_DIR... --out DIR

writes DIR/index.html (self-contained: opens from the file system, no network), DIR/leaderboard.csv
(one row per finished run, every column of harness.table) and DIR/leaderboard.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness import results, table
from harness.leaderboard_page import render


def build(sources: list[str], out: str | Path) -> table.Board:
    out = Path(out)
    board = table.tabulate(results.load(sources))
    out.mkdir(parents=True, exist_ok=True)
    board.runs.to_csv(out / "leaderboard.csv", index=False)
    (out / "leaderboard.md").write_text(table.markdown(board))
    (out / "index.html").write_text(render(board, sources, time.strftime("%Y-%m-%d %H:%M:%S %Z")), encoding="utf-8")
    return board


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR", help="folders holding runs/<run_id>.json")
    parser.add_argument("--out", required=True, help="folder for index.html, leaderboard.csv and leaderboard.md")
    args = parser.parse_args(argv)
    missing = [d for d in args.results_dirs if not (Path(d) / results.RUNS).is_dir()]
    if missing:
        print(f"error: no {results.RUNS}/ folder in {', '.join(missing)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    board = build(args.results_dirs, args.out)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.name in ("index.html", "leaderboard.csv", "leaderboard.md"))
    print(f"{len(board.runs)} finished runs, {len(board.failed)} failed, {len(board.groups)} evaluation setting(s): "
          f"{Path(args.out) / 'index.html'} ({size / 1024:.0f} KiB in all) in {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
