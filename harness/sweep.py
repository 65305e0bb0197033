"""Grids on a cluster: the plan before launching, the summary after, and `python -m harness.sweep`.

`python -m harness -m <grid>` goes through `GridSweeper` (hydra_plugins/harness_sweep): every point is
composed and validated here, on the submitting machine (the checks `harness.run.plan` does before any
weights load), and looked up in the results directory. Invalid points are listed with their one-line
errors, points with an ok record (or running now under a live claim) are skipped, and only the rest
go to the launcher: Hydra's basic one, or submitit's (a Slurm array job, or local processes). When
the launcher returns, every launched point's record is read back into a summary (done / skipped /
failed / invalid); the command exits 1 if any launched point did not end ok.

    python -m harness.sweep status DIR [--grid <overrides>] [--json]   # per point: done / running / failed / ...
    python -m harness.sweep prefetch <overrides>                       # download what a grid needs, on the login node
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from harness import cluster, results
from harness.claims import LOST, Lock
from harness.config import ConfigError

log = logging.getLogger("harness")
# What a point's state means for a launch: launched, or skipped and why.
LAUNCH = ("missing", "failed", "interrupted", "corrupt", "lost", "stale")


@dataclass
class Point:
    overrides: list[str]
    state: str  # invalid, missing, done, stale, failed, interrupted, corrupt, running, lost
    run_id: str | None = None
    detail: str | None = None  # the config error, the record's error, the claim's holder
    job_id: str | None = None
    log: str | None = None
    results_dir: str | None = None

    @property
    def label(self) -> str:
        return " ".join(self.overrides)


# ---- one point: its state in a results directory ------------------------------------------------


def point_state(results_dir: str, rid: str, stale_after_s: float = 600) -> dict[str, Any]:
    """A point's state from its record and its claim: done, stale, failed, interrupted, corrupt, running,
    lost (a claim whose holder died, e.g. a job killed by Slurm or the OOM killer) or missing."""
    try:
        record = results.read(results_dir, rid)
    except results.CorruptRecord as err:
        return {"state": "corrupt", "detail": f"{err.path}: {err.reason}"}
    claim = Lock(results.claim_path(results_dir, rid), stale_after_s)
    holder = claim.holder()
    if record and record["status"] == "ok":
        reason = results.stale_reason(record)
        return {"state": "stale" if reason else "done", "detail": reason, **_job(record)}
    if holder:
        stale = claim.stale_reason(holder)
        who = f"{holder.get('host')} pid {holder.get('pid')}" + (f" job {holder['job_id']}" if holder.get("job_id") else "")
        return {"state": "lost" if stale else "running", "detail": f"{who}: {stale}" if stale else who, "job_id": holder.get("job_id")}
    if record:
        return {"state": record["status"], "detail": record.get("error"), **_job(record)}
    lost = sorted((Path(results_dir) / results.CLAIMS / LOST).glob(f"{rid}.*.lock"))
    if lost:
        return {"state": "missing", "detail": f"an earlier claim was lost: {lost[-1]}"}
    return {"state": "missing"}


def _job(record: dict[str, Any]) -> dict[str, Any]:
    job = record.get("job") or {}
    return {"job_id": job.get("job_id"), "log": job.get("log")}


# ---- a grid: plan, launch, summary --------------------------------------------------------------


def plan_grid(points: Iterable[Sequence[str]], compose: Callable[[list[str]], DictConfig]) -> list[Point]:
    """Validate every point (no weights load) and find its state in its results directory."""
    from hydra.errors import HydraException

    from harness.run import plan  # imports transformers: after the cache directory is set

    planned = []
    for overrides in points:
        overrides = list(overrides)
        try:
            cfg = compose(overrides)
            exp = plan(cfg)[0]
        except (ConfigError, HydraException) as err:  # HydraException: e.g. model=<no such file>
            planned.append(Point(overrides, "invalid", detail=str(err).strip().splitlines()[0]))
            continue
        rid = results.run_id(exp.config)
        state = point_state(exp.results_dir, rid, exp.claim_stale_s)
        if state["state"] == "stale" and not exp.rerun_stale:
            state["state"] = "done"
        planned.append(Point(overrides, run_id=rid, results_dir=exp.results_dir, **state))
    return planned


def to_launch(point: Point, retry_failed: bool) -> bool:
    if point.state in ("failed", "interrupted"):
        return retry_failed
    return point.state in LAUNCH


def print_plan(planned: list[Point], retry_failed: bool) -> None:
    launching = [p for p in planned if to_launch(p, retry_failed)]
    counts = _counts(planned)
    print(f"plan: {len(planned)} points: {counts.get('done', 0)} done, {counts.get('invalid', 0)} invalid, "
          f"{counts.get('running', 0)} running elsewhere, {counts.get('failed', 0) + counts.get('interrupted', 0)} failed before"
          f" ({'retried' if retry_failed else 'skipped: retry_failed=false'}), {len(launching)} to launch", file=sys.stderr)
    for p in planned:
        if p.state == "invalid":
            print(f"  invalid: {p.label}: {p.detail}", file=sys.stderr)
        elif p.state in ("corrupt", "lost", "running", "stale"):
            print(f"  {p.state}: {p.label}: {p.detail}", file=sys.stderr)


def summarize(planned: list[Point], launched: list[Point], jobs: dict[tuple, tuple[str, str]] | None = None) -> int:
    """Read back every launched point's record; print done / skipped / failed / invalid; the exit code.
    `jobs`: (job id, log) of each point's job, for points whose job died before leaving a trace."""
    after = []
    for p in launched:
        state = point_state(p.results_dir, p.run_id)
        if not state.get("job_id") and tuple(p.overrides) in (jobs or {}):
            state["job_id"], state["log"] = jobs[tuple(p.overrides)]
        after.append(Point(p.overrides, run_id=p.run_id, results_dir=p.results_dir, **state))
    done = [p for p in after if p.state in ("done", "stale")]
    running = [p for p in after if p.state == "running"]  # taken by a concurrent launch meanwhile
    bad = [p for p in after if p not in done and p not in running]
    skipped = len(planned) - len(launched) - sum(p.state == "invalid" for p in planned)
    print(f"summary: {len(done)} done, {skipped} skipped (done before or running elsewhere), {len(running)} running elsewhere, "
          f"{len(bad)} failed, {sum(p.state == 'invalid' for p in planned)} invalid", file=sys.stderr)
    for p in bad:
        where = f" [job {p.job_id}, log {p.log}]" if p.job_id else ""
        print(f"  {p.state}: {p.label}: {p.detail or 'no record (the job died before writing one)'}{where}", file=sys.stderr)
    return 1 if bad else 0


def _counts(points: Iterable[Point]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in points:
        counts[p.state] = counts.get(p.state, 0) + 1
    return counts


def run_sweeper(sweeper, arguments: list[str]) -> list[Any]:
    """The body of GridSweeper.sweep: plan, print, launch what is needed, summarize, exit 1 on failures."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = sweeper.config
    cluster.use_cache_dir(config.get("cache_dir"))
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    points = sweeper.split_arguments(parser.parse_overrides(sweeper._parse_config() + arguments), None)[0]
    planned = plan_grid(points, lambda overrides: task_config(sweeper.hydra_context.config_loader.load_sweep_config(config, overrides)))
    retry_failed = bool(config.get("retry_failed", True))
    print_plan(planned, retry_failed)
    if config.get("dry_run"):
        return []
    launch = [p for p in planned if to_launch(p, retry_failed)]
    returns = []
    batch = sweeper.max_batch_size or len(launch)
    for start in range(0, len(launch), batch or 1):
        returns.append(sweeper.launcher.launch([p.overrides for p in launch[start : start + batch]], initial_job_idx=start))
    code = summarize(planned, launch, getattr(sweeper.launcher, "submitted", {}))
    if code:
        sys.exit(code)
    return returns


def task_config(sweep_config: DictConfig) -> DictConfig:
    """The config a job's task function sees: the composed sweep config without its hydra node."""
    cfg = copy.deepcopy(sweep_config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


def submit_and_wait(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
    """hydra-submitit-launcher's `launch`, except that it waits for every job: a job that died (killed,
    cancelled, out of memory) becomes a failed JobReturn instead of ending the wait for the others."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(launcher.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{launcher._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=launcher._EXECUTOR, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"{launcher._EXECUTOR}_{k}": v for k, v in params.items()})
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("submitit %s sweep: %d jobs, output under %s", launcher._EXECUTOR, len(job_overrides), sweep_dir)
    args = [(list(o), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}", Singleton.get_state())
            for i, o in enumerate(job_overrides)]
    for (overrides, *_), idx in zip(args, range(initial_job_idx, initial_job_idx + len(args))):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
    jobs = executor.map_array(launcher, *zip(*args))
    launcher.submitted = {tuple(overrides): (job.job_id, str(job.paths.stdout)) for job, (overrides, *_) in zip(jobs, args)}
    returns = []
    for job, (overrides, *_) in zip(jobs, args):
        try:
            returns.append(job.results()[0])
        except Exception as err:  # the job left no result: killed by Slurm, the OOM killer, scancel
            log.error("job %s (%s) ended without a result: %s", job.job_id, " ".join(overrides), str(err).splitlines()[0])
            returns.append(JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=err))
    return returns


# ---- python -m harness.sweep -----------------------------------------------------------------------


def compose_grid(overrides: list[str]) -> tuple[list[list[str]], Callable[[list[str]], DictConfig]]:
    """The points of a grid given as Hydra sweep overrides, and how to compose one of them."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    initialize_config_module("harness.conf", version_base="1.3")
    points = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]
    return points, lambda point: compose("config", overrides=point)


def status(results_dir: str, grid: list[str] | None) -> dict[str, Any]:
    """Every recorded point (or, with a grid, every point of the grid) and its state."""
    if grid is not None:
        points, compose = compose_grid([*grid, f"results_dir={results_dir}"])
        planned = plan_grid(points, compose)
    else:
        planned = [Point([_describe_file(path)], run_id=path.stem, results_dir=results_dir, **point_state(results_dir, path.stem))
                   for path in _point_files(results_dir)]
    rows = [{k: v for k, v in asdict(p).items() if k != "results_dir"} | {"point": p.label} for p in planned]
    return {"results_dir": str(results_dir), "counts": _counts(planned), "points": rows}


def _point_files(results_dir: str) -> list[Path]:
    """One file per known point: its record, or its claim if it has no record yet."""
    records = {p.stem: p for p in (Path(results_dir) / results.RUNS).glob("*.json")}
    claims = {p.stem: p for p in (Path(results_dir) / results.CLAIMS).glob("*.lock")}
    return [records.get(rid) or claims[rid] for rid in sorted(records.keys() | claims.keys())]


def _describe_file(path: Path) -> str:
    try:
        config = results.read_record(path)["config"]
    except (results.CorruptRecord, KeyError, FileNotFoundError):
        return path.name
    return describe(config)


def describe(config: dict[str, Any]) -> str:
    """A point as overrides: model, method and the compression and task keys."""
    parts = [f"model={config['model']['name']}", f"method={config['method']['name']}", f"bits={config['bits']}"]
    if config.get("group_size") is not None and config["bits"] < 16:
        parts.append(f"group_size={config['group_size']}")
    if config.get("sparsity"):
        parts.append(f"sparsity={config['sparsity']:g}" if config["sparsity_pattern"] == "unstructured" else f"sparsity_pattern={config['sparsity_pattern']}")
    parts.append(f"tasks=[{','.join(config['tasks'])}]")
    return " ".join(parts)


def print_status(report: dict[str, Any]) -> None:
    counts = report["counts"]
    print(f"{report['results_dir']}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    for row in report["points"]:
        job = f" job {row['job_id']}" if row.get("job_id") else ""
        where = f" log {row['log']}" if row.get("log") else ""
        detail = f": {row['detail']}" if row.get("detail") else ""
        print(f"  {row['state']:<11} {row['run_id'] or '-':<16} {row['point']}{job}{where}{detail}")
    if counts.get("stale"):
        print(f"{counts['stale']} ok records were made by other code: relaunch the grid with rerun_stale=true to recompute them")
    if counts.get("lost"):
        print("lost: the job holding the point died (killed, out of memory, node failure); a relaunch runs it again")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("status", help="per point: done / running / failed / interrupted / lost / missing / stale / corrupt")
    show.add_argument("results_dir")
    show.add_argument("--grid", nargs="+", metavar="OVERRIDE", help="the grid's overrides (as given to -m): show every point of it")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    fetch = commands.add_parser("prefetch", help="download the models and datasets a grid needs (run on a node with internet)")
    fetch.add_argument("overrides", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.command == "status":
        report = status(args.results_dir, args.grid)
        print(json.dumps(report, indent=2)) if args.json else print_status(report)
        return 0
    from harness.prefetch import prefetch

    return prefetch(args.overrides)


if __name__ == "__main__":
    sys.exit(main())
