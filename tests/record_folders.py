"""Results folders of many synthetic records in today's format, for `results.load`'s test and
benchmarks/results_load.py: each record is the real one in tests/fixtures/record_v1.json with
another seed (so another run id), metric and host."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from harness import results

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def synthetic(seed: int, host: str, status: str = "ok", finished_at: str = "2026-12-01T05:00:00+0000") -> dict:
    record = copy.deepcopy(fixture("record_v1.json"))
    record["config"]["seed"] = seed
    record["run_id"] = results.run_id(record["config"])
    record["env"]["host"] = host
    record["status"], record["finished_at"] = status, finished_at
    record["metrics"] = {"pydoc/ppl": 100.0 + seed} if status == "ok" else {}
    record["error"] = None if status == "ok" else "RuntimeError: synthetic failure"
    return record


def save(folder: Path, record: dict, name: str | None = None) -> Path:
    """The record as results.write lays it out (indented, sorted keys), without its superseding."""
    path = folder / results.RUNS / f"{name or record['run_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
    return path


def hosts(root: Path, count: int, n_hosts: int = 4) -> list[Path]:
    """`count` distinct ok records spread round-robin over `n_hosts` results folders under `root`."""
    folders = [root / f"host{h}" for h in range(n_hosts)]
    for seed in range(count):
        save(folders[seed % n_hosts], synthetic(seed, host=f"host{seed % n_hosts}"))
    return folders
