"""Print results folders as the leaderboard's Markdown table (harness/table.py, the one way records are
tabulated): per model and evaluation setting, every run's scores with their change against the dense
baseline, then storage, time and the failed runs.

    python benchmarks/results_table.py <results_dir>...
"""
from __future__ import annotations

import sys

from harness import results, table


def main(directories: list[str]) -> None:
    print(table.markdown(table.tabulate(results.load(directories))))


if __name__ == "__main__":
    main(sys.argv[1:])
