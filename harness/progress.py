"""Progress of long steps: a bar with an ETA in a terminal, plain periodic log lines anywhere else.

A Slurm log or a pipe is not a terminal: there a redrawn bar would leave one carriage return per
update in the file. There `progress` logs a line when another 10% is done (at most one every
MIN_GAP_S seconds) or EVERY_S seconds have passed, and a last line when the step ends, e.g.

    calibration blocks: 12/32 (38%), 04:10 elapsed, ETA 06:57, 0.05 blocks/s

`route_library_bars()` sends the bars that transformers (loading weights, de-quantizing a GGUF
file) and lm-eval (its requests) draw to the same plain lines when the output is not a terminal.
"""
from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("harness")
T = TypeVar("T")

EVERY_S = 30.0  # a line at least this often while items complete
MIN_GAP_S = 2.0  # a 10% step logs a line only this long after the previous one (short steps stay short)
# Modules that draw tqdm bars of their own (their module-level `tqdm`) during a long step, each with
# the package whose presence means it is in use this run.
LIBRARY_BARS = {"transformers.modeling_gguf_pytorch_utils": "gguf", "lm_eval.models.huggingface": "lm_eval"}


def is_terminal() -> bool:
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate `iterable`, showing `desc` progress: a tqdm bar in a terminal (log lines printed
    meanwhile go above it), else LogLines. `total` defaults to len(iterable) where it has one."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not is_terminal():
        yield from LogLines(iterable, desc=desc, total=total, unit=unit)
        return
    with logging_redirect_tqdm(), tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True) as bar:
        yield from bar


class LogLines(tqdm):
    """A tqdm that logs plain lines (no carriage return, no bar) instead of redrawing a bar."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._logged_n: float | None = None
        self._logged_at = 0.0
        self._closing = False
        kwargs["file"] = _Discard()  # tqdm still writes cursor moves and newlines: not wanted here
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = time.monotonic()
        if self._closing and self._logged_n == self.n:
            return True
        if self._closing or self._logged_n is None or self._due(now):
            log.info("%s", self.line())
            self._logged_n, self._logged_at = self.n, now
        return True

    def close(self) -> None:
        self._closing = True
        super().close()

    def _due(self, now: float) -> bool:
        since = now - self._logged_at
        if since >= EVERY_S:
            return True
        if not self.total or since < MIN_GAP_S:
            return False
        return int(10 * self.n / self.total) > int(10 * self._logged_n / self.total)

    def line(self) -> str:
        """'desc: n/total (p%), elapsed, ETA, rate' (no total: 'desc: n, elapsed, rate')."""
        n, total, elapsed = self.n, self.total, self.format_dict["elapsed"]
        rate = n / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc or 'progress'}: {self.format_sizeof(n) if self.unit_scale else n}"
        if total:
            text += f"/{self.format_sizeof(total) if self.unit_scale else total} ({n / total:.0%})"
        text += f", {self.format_interval(elapsed)} elapsed"
        if total and 0 < n < total and rate > 0:
            text += f", ETA {self.format_interval((total - n) / rate)}"
        return text + (f", {rate:.3g} {self.unit}/s" if n else "")


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def route_library_bars() -> None:
    """Outside a terminal, draw the libraries' bars as LogLines from now on (in a terminal they stay
    as they are). transformers takes a hook for the bars it makes through its own logging module; the
    modules in LIBRARY_BARS call tqdm directly, so their `tqdm` is replaced, for those in use (their
    package imported: a GGUF tokenizer imports gguf, lm-eval tasks import lm_eval when prepared)."""
    if is_terminal():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_tqdm_hook(_library_bar)
    for name, package in LIBRARY_BARS.items():
        if package in sys.modules:
            importlib.import_module(name).tqdm = LogLines


def _library_bar(factory, args: tuple, kwargs: dict[str, Any]):
    from transformers.utils import logging as hf_logging

    return LogLines(*args, **kwargs) if hf_logging.is_progress_bar_enabled() else factory(*args, **kwargs)
