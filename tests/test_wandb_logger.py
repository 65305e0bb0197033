"""logger=wandb with the real wandb package: what an offline run holds is read back from wandb's own
log file (run-<id>.wandb), a sweep's runs share one group, and a wandb failure never costs a run its
record."""
import base64
import hashlib
import json
import socket
import struct
import time
import zlib
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from conftest import TINY, records, run_cli
from harness import loggers, results
from harness.config import ConfigError
from harness.run import plan
from record_folders import fixture, save

# wandb's .wandb file: a 7-byte header (":W&B", magic 0xBEE1, version), then LevelDB-log chunks in
# 32 KiB blocks, each chunk with a CRC-32, a length and a type (full, first, middle, last) before it.
# The chunks of one record join to a serialized wandb_internal_pb2.Record.
BLOCK, CHUNK_HEADER, FULL, LAST = 32768, 7, 1, 4


def wandb_records(path: Path):
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    pos, parts = 7, []
    while pos + CHUNK_HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if room < CHUNK_HEADER or kind == 0:  # the rest of a block is padding
            pos += room
            continue
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"{path}: bad checksum at {pos}"
        pos += CHUNK_HEADER + length
        parts.append(chunk)
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def finished_records(folder: Path, wait_s: float = 60.0) -> list:
    """The records of the folder's run log once wandb has written its closing `exit` record: wandb's
    service writes the log asynchronously, and on a loaded machine `run.finish()` can return before
    the file holds more than its header (seen once in a full CI run)."""
    deadline = time.monotonic() + wait_s
    while True:
        late = time.monotonic() > deadline
        logs = list(folder.glob("run-*.wandb"))
        try:
            records = list(wandb_records(logs[0])) if len(logs) == 1 else []
        except AssertionError:  # a chunk caught half written; read again
            if late:
                raise
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or late:
            assert len(logs) == 1, f"{folder}: {len(logs)} run logs"
            return records
        time.sleep(0.2)


def offline_run(folder: Path) -> dict:
    """What one offline run folder holds: its group, name, config, history, summary and artifacts."""
    run = {"dir": folder, "history": {}, "summary": {}, "config": {}, "artifacts": []}
    for record in finished_records(folder):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run |= {"group": record.run.run_group, "name": record.run.display_name, "project": record.run.project}
            run["config"] |= _items(record.run.config.update)
        elif kind == "config":
            run["config"] |= _items(record.config.update)
        elif kind == "history":
            run["history"] |= _items(record.history.item)
        elif kind == "summary":
            run["summary"] |= _items(record.summary.update)
        elif kind == "artifact":
            run["artifacts"].append(record.artifact)
    return run


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """wandb's settings, cache and artifact staging under tmp_path; no key, mode or server from outside."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    return tmp_path


def test_sweep_logs_every_run_offline_in_one_group_after_its_record(wandb_home):
    results_dir = wandb_home / "results"
    proc = run_cli("-m", *TINY, "method=rtn", "bits=3,4", "group_size=32", "logger=wandb", results_dir=results_dir)
    runs = {run["name"]: run for run in map(offline_run, sorted((results_dir / "wandb").glob("offline-run-*")))}
    recorded = records(results_dir)
    assert len(recorded) == 2 and set(runs) == {r["run_id"] for r in recorded}
    (sweep_dir,) = (results_dir / "hydra" / "multirun").glob("*/*")
    for record in recorded:
        run = runs[record["run_id"]]
        assert run["project"] == "compression-harness" and run["group"] == str(sweep_dir)
        assert run["config"]["bits"] == record["config"]["bits"] and run["config"]["method"] == {"name": "rtn"}
        assert run["history"]["pydoc/ppl"] == record["metrics"]["pydoc/ppl"] == run["summary"]["pydoc/ppl"]
        assert run["history"]["stats/bits_per_weight"] == record["stats"]["bits_per_weight"]
        assert run["history"]["timings/compress_s"] == record["timings"]["compress_s"]
        assert run["summary"]["status"] == "ok" and run["summary"]["schema_version"] == results.SCHEMA_VERSION
        assert run["summary"]["env"]["host"] == record["env"]["host"]
        (artifact,) = run["artifacts"]
        assert (artifact.name, artifact.type) == (f"record-{record['run_id']}", "run-record")
        (content,) = artifact.manifest.contents
        record_bytes = results.record_path(results_dir, record["run_id"]).read_bytes()
        assert content.path == "record.json" and content.digest == base64.b64encode(hashlib.md5(record_bytes).digest()).decode()
    output = proc.stdout + proc.stderr
    assert "upload with: wandb sync" in output
    # Not a terminal: progress came as plain lines, and no library drew a bar with carriage returns.
    assert "\r" not in output and output.count("pydoc windows: 4/4 (100%)") == 2


def test_wandb_failure_leaves_the_run_and_its_record_intact(wandb_home, monkeypatch):
    """Online, with a server that refuses connections (no network) and a key it never accepted."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")
    results_dir = wandb_home / "results"
    proc = run_cli(*TINY, "method=none", "logger=wandb", "logger.mode=online", "logger.init_timeout=5", results_dir=results_dir)
    (record,) = records(results_dir)
    assert record["status"] == "ok" and record["metrics"]["pydoc/ppl"] > 1
    assert f"wandb logging of run {record['run_id']} failed (its record is safe at" in proc.stdout + proc.stderr


def test_leaderboard_table_is_logged_as_a_wandb_table(wandb_home):
    save(wandb_home / "results", fixture("record_v0.json"))
    table = results.load(wandb_home / "results")
    folder = loggers.log_table(table, "leaderboard", {"dir": str(wandb_home / "board"), "mode": "offline", "group": "boards"})
    run = offline_run(folder)
    assert run["group"] == "boards" and run["name"] == "leaderboard"
    assert run["history"]["leaderboard/_type"] == "table-file" and run["history"]["leaderboard/nrows"] == 1
    logged = json.loads((folder / "files" / run["history"]["leaderboard/path"]).read_text())
    assert logged["columns"] == list(table.columns)
    assert logged["data"][0][0] == table.loc[0, "run_id"]


def test_logger_settings_are_checked_first_and_are_not_part_of_the_experiment(hydra_cfg):
    with pytest.raises(ConfigError, match="logger.mode='bogus'"):
        plan(hydra_cfg(*TINY, "logger=wandb", "logger.mode=bogus"))
    with pytest.raises(ConfigError, match="logger.init_timeout=0"):
        plan(hydra_cfg(*TINY, "logger=wandb", "logger.init_timeout=0"))
    quiet, logged = plan(hydra_cfg(*TINY))[0], plan(hydra_cfg(*TINY, "logger=wandb"))[0]
    assert "logger" not in logged.config and results.run_id(quiet.config) == results.run_id(logged.config)
    assert loggers.settings(hydra_cfg(*TINY, "logger=wandb", "logger.mode=disabled").logger) is None
