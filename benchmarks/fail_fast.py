"""How long bad input takes to be rejected: `python -m harness` with a bad value on the default model
(the error must come before its GGUF is read), and an offline hub dataset. Prints each case's median
wall time over --repeats fresh processes. The tests assert *that* nothing loads; this measures *how fast*.

    python benchmarks/fail_fast.py --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "bits=17": ["method=rtn", "bits=17"],
    "unknown model": ["model=no-such-model"],
    "unknown method": ["method=no-such-method"],
    "unknown task": ["tasks=[nope]"],
    "hqq bits=7": ["method=hqq", "bits=7"],
}
OFFLINE_DATASET = (
    "import os; os.environ['HF_ENDPOINT'] = 'https://hub.invalid'; os.environ.pop('HF_HUB_OFFLINE', None)\n"
    "from harness import data\n"
    "try:\n    data.load_corpus('wikitext2', 'test')\nexcept data.DataUnavailable:\n    pass\n"
)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    baseline = [sys.executable, "-c", "import harness.run"]
    with tempfile.TemporaryDirectory() as results:
        runs = {name: [sys.executable, "-m", "harness", *overrides, f"results_dir={results}"] for name, overrides in CASES.items()}
        runs["offline wikitext2"] = [sys.executable, "-c", OFFLINE_DATASET]
        base = statistics.median(timed(baseline) for _ in range(args.repeats))
        print(f"{'import harness.run (floor)':<28}{base:>8.1f} s median of {args.repeats}", flush=True)
        for name, cmd in runs.items():
            median = statistics.median(timed(cmd) for _ in range(args.repeats))
            print(f"{name:<28}{median:>8.1f} s median of {args.repeats}   {median / base:.1f}x the import floor", flush=True)


if __name__ == "__main__":
    main()
