"""Benchmark harness for LLM compression."""
import os
import socket

from omegaconf import OmegaConf

# `${launch_id:}` in conf/config.yaml's Hydra folders: host and process of the launch, so two launches
# in the same microsecond (array jobs, concurrent users) still get folders of their own. Cached, so
# every job of one sweep resolves the sweep folder its launcher made.
OmegaConf.register_new_resolver("launch_id", lambda: f"{socket.gethostname()}-{os.getpid()}", use_cache=True, replace=True)
