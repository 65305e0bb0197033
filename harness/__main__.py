"""`python -m harness [overrides]`: one experiment; `python -m harness -m ...`: a sweep (Hydra multirun)."""
import logging
import sys

import hydra

from harness.config import ConfigError
from harness.run import run


@hydra.main(config_path="pkg://harness.conf", config_name="config", version_base="1.3")
def main(cfg) -> None:
    try:
        run(cfg)
    except ConfigError as err:
        logging.getLogger("harness").error("config error: %s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
