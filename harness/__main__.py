"""`python -m harness [overrides]`: one experiment; `python -m harness -m ...`: a sweep (Hydra multirun).

A single run exits non-zero on bad input (2) or failure (1). In a sweep, one bad combination or one
failed run must not stop the others: it is reported (and a failure recorded) and the sweep goes on.
"""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from harness.config import ConfigError
from harness.run import run

log = logging.getLogger("harness")


@hydra.main(config_path="pkg://harness.conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
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
