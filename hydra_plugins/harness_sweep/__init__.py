"""Hydra plugins of the harness (Hydra instantiates plugins only from the `hydra_plugins` package).

GridSweeper: the default sweeper of `python -m harness -m` (conf/hydra/sweeper/harness.yaml).
SlurmLauncher / LocalLauncher: hydra-submitit-launcher's, waiting for every job of a grid
(conf/hydra/launcher/submitit_{slurm,local}.yaml). The logic lives in harness/sweep.py.
"""
from typing import Any, List, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra_plugins.hydra_submitit_launcher import submitit_launcher


class GridSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        from harness.sweep import run_sweeper

        return run_sweeper(self, arguments)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from harness.sweep import submit_and_wait

        return submit_and_wait(self, job_overrides, initial_job_idx)


class LocalLauncher(submitit_launcher.LocalLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from harness.sweep import submit_and_wait

        return submit_and_wait(self, job_overrides, initial_job_idx)
