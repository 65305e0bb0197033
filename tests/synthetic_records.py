"""Synthetic run records in the harness's record format, for the leaderboard's tests and its build-time
benchmark (benchmarks/leaderboard_build.py). Scores follow the bits and sparsity so the tables look
like real ones; each record is what harness/run.py writes, with made-up numbers."""
from __future__ import annotations

import random

from harness import results

TASKS = ["pydoc", "facts_mc"]


def record(model="m", method="rtn", bits=4, sparsity=0.0, pattern="unstructured", ppl=12.0, acc=0.35,
           acc_stderr=0.02, n=200, status="ok", error=None, finished_at="2026-12-01T05:00:00+0000",
           tasks=TASKS, max_samples=200, seqlen=2048, decode=None, group_size=64, seed=0, **extra_metrics) -> dict:
    dense = method == "none"
    config = {
        "model": {"name": model, "package": None, "path": f"/models/{model}", "gguf_file": None},
        "method": {"name": method}, "bits": 16 if dense else bits, "group_size": None if bits >= 16 else group_size,
        "symmetric": None if bits >= 16 else False, "sparsity": sparsity, "sparsity_pattern": pattern,
        "tasks": list(tasks), "seqlen": seqlen, "max_eval_tokens": 4096, "max_samples": max_samples,
        "eval_batch_size": None, "judge": {}, "lm_eval_include_path": None, "calib": None, "seed": seed,
        "device": "cpu", "dtype": "float32",
        "task_specs": {t: {"max_samples": max_samples, "seed": 0} for t in tasks if t != "pydoc"},
    }
    bpw = 16.0 if bits >= 16 else bits + 0.31
    if sparsity:
        bpw = min(bpw, 16.0) * (1 - sparsity) + 1.0
    metrics = {}
    if status == "ok":
        metrics = {"pydoc/ppl": ppl, "facts_mc/acc": acc, "facts_mc/acc_stderr": acc_stderr, "facts_mc/n": n,
                   "facts_mc/acc/capital": acc, "facts_mc/acc/capital_stderr": acc_stderr * 1.4, **extra_metrics}
    rec = {
        "config": config, "status": status, "error": error, "started_at": finished_at, "finished_at": finished_at,
        "env": {"host": "synthetic"}, "metrics": metrics,
        "stats": {"bits_per_weight": bpw, "sparsity": sparsity, "compressed_bytes": int(bpw * 1e6 / 8)} if status == "ok" else {},
        "timings": {"compress_s": 0.0 if dense else 1.5}, "tasks": {},
    }
    if decode is not None:
        rec["latency"] = {"available": True, "reason": None, "kernel": "synthetic", "decode_tokens_per_s": {"1": decode, "16": decode * 8}}
    rec["run_id"] = results.run_id(config)
    return rec


def grid(count: int, seed: int = 0) -> list[dict]:
    """`count` records over 4 models and several methods, dense baselines included, ~2% failed."""
    rng = random.Random(seed)
    methods = ["rtn", "gptq", "awq", "hqq", "magnitude", "wanda", "sparsegpt"]
    records = []
    for i in range(count):
        model = f"model-{i % 4}"
        if i < 4:
            records.append(record(model=model, method="none", bits=16, ppl=10.0 + i, acc=0.40))
            continue
        method = rng.choice(methods)
        prunes = method in ("magnitude", "wanda", "sparsegpt")
        bits = rng.choice([2, 3, 4, 8]) if not prunes else rng.choice([4, 16])
        sparsity = rng.choice([0.25, 0.5, 0.7]) if prunes else 0.0
        loss = (2.0 ** (4 - bits) if bits < 16 else 0.0) + 10 * sparsity**2 + rng.random()
        failed = rng.random() < 0.02
        records.append(record(
            model=model, method=method, bits=bits, sparsity=sparsity, ppl=10.0 * (1 + loss), acc=max(0.25, 0.40 - 0.03 * loss),
            status="failed" if failed else "ok", error="RuntimeError: CUDA out of memory" if failed else None,
            finished_at=f"2026-12-01T05:{i // 60 % 60:02d}:{i % 60:02d}+0000", decode=rng.uniform(20, 200), seed=i))
    return records
