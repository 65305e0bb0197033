"""Progress of long steps: plain log lines (no carriage returns) where the output is not a terminal,
a tqdm bar with an ETA in a terminal, and the libraries' own bars routed to the plain lines."""
import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import time

import pytest
from transformers.utils import logging as hf_logging

from conftest import REPO
from harness import progress


@pytest.fixture
def lines(caplog, monkeypatch):
    """The progress lines logged, with the 2 s floor between 10% lines lifted (items are instant here)."""
    monkeypatch.setattr(progress, "MIN_GAP_S", 0.0)
    caplog.set_level(logging.INFO, logger="harness")
    return lambda: [r.getMessage() for r in caplog.records]


def test_not_a_terminal_logs_a_line_per_tenth_and_a_last_one(lines, capsys):
    assert not progress.is_terminal()  # pytest captures stderr
    seen = []
    for item in progress.progress(range(20), "scoring", unit="batch"):
        seen.append(item)
        time.sleep(0.03)  # tqdm looks at most every 0.1 s
    assert seen == list(range(20))
    logged = lines()
    assert logged[0] == "scoring: 0/20 (0%), 00:00 elapsed"
    assert logged[-1].startswith("scoring: 20/20 (100%), 00:00 elapsed, ") and logged[-1].endswith(" batch/s")
    assert 3 <= len(logged) <= 12 and len(set(logged)) == len(logged)
    assert all("ETA" in line for line in logged[1:-1])
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err and "scoring" not in captured.err  # lines go through logging only


def test_without_a_length_lines_count_items(lines):
    list(progress.progress((i for i in range(5)), "documents"))
    assert lines()[0] == "documents: 0, 00:00 elapsed" and lines()[-1].startswith("documents: 5, ")


@pytest.mark.parametrize("seconds_per_item,expected", [(0.01, 2), (3, 11), (31, 101)])
def test_a_line_per_tenth_at_most_every_2_s_and_at_least_every_30_s(lines, monkeypatch, seconds_per_item, expected):
    """100 items, each taking `seconds_per_item` on a fake clock: quick ones log only the first and the
    last line, 3 s ones a line per 10%, 31 s ones a line per item."""
    monkeypatch.setattr(progress, "MIN_GAP_S", 2.0)
    clock = (i * seconds_per_item for i in range(10_000))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    list(progress.LogLines(range(100), desc="blocks", mininterval=0, miniters=1))
    assert len(lines()) == expected


def test_libraries_bars_become_plain_lines(lines, monkeypatch):
    import gguf  # noqa: F401 (in use: transformers' GGUF reader's bar is routed)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    monkeypatch.setattr(gguf_utils, "tqdm", gguf_utils.tqdm)  # restored afterwards
    previous = hf_logging.set_tqdm_hook(None)
    try:
        progress.route_library_bars()
        with hf_logging.tqdm(total=4, desc="Loading weights") as bar:
            bar.update(4)
        list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
    finally:
        hf_logging.set_tqdm_hook(previous)
    assert gguf_utils.tqdm is progress.LogLines
    assert any(line.startswith("Loading weights: 4/4 (100%)") for line in lines())
    assert any(line.startswith("Converting and de-quantizing GGUF tensors...: 3/3 (100%)") for line in lines())


def test_a_terminal_gets_a_bar_with_an_eta():
    """In a pseudo-terminal: tqdm's bar, redrawn in place, with elapsed<remaining time."""
    script = "import time\nfrom harness.progress import progress\nfor _ in progress(range(30), 'demo'): time.sleep(0.02)\n"
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert child.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "\r" in text and "demo: 100%" in text and "30/30 [00:00<00:00" in text
