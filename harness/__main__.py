"""`python -m harness [overrides]`: one experiment; `python -m harness -m ...`: a sweep (Hydra multirun).

A single run exits non-zero on bad input (2) or failure (1). In a sweep every point is validated
before any is launched (harness/sweep.py); one failed run does not stop the others: it is recorded,
and the sweep's summary at the end lists it and makes the command exit 1.
"""
import logging
import sys
import warnings

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from harness import cluster
from harness.config import ConfigError

log = logging.getLogger("harness")
# conf/hydra/launcher/submitit_*.yaml share their names with the plugin's schemas on purpose: Hydra
# then checks the project's launcher defaults against them (a misspelled key is an error).
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_\w+' is validated against ConfigStore schema")


@hydra.main(config_path="pkg://harness.conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    cluster.use_cache_dir(cfg.get("cache_dir"))
    from harness.run import run  # loads transformers, which reads the cache location once

    try:
        run(cfg)
    except ConfigError as err:
        log.error("config error: %s", err)
        print(f"error: {err}", file=sys.stderr)
        if not sweeping:
            sys.exit(2)
    except Exception:
        if not sweeping:
            raise
        log.exception("run failed (recorded); the sweep goes on")


if __name__ == "__main__":
    main()
