"""Run ids, atomic records that are never lost, and the results table."""
import json

from harness import results


def record(rid, status="ok", ppl=10.0):
    return {"run_id": rid, "status": status, "error": None, "config": {"bits": 4, "model": {"name": "m"}},
            "metrics": {"pydoc/ppl": ppl}, "stats": {"sparsity": 0.0}, "timings": {}, "env": {}}


def test_run_id_depends_on_content_not_key_order():
    a = {"bits": 4, "model": {"name": "x", "path": "p"}, "tasks": ["pydoc"]}
    b = {"tasks": ["pydoc"], "model": {"path": "p", "name": "x"}, "bits": 4}
    assert results.run_id(a) == results.run_id(b)
    assert results.run_id(a) != results.run_id(a | {"bits": 3})


def test_rewrite_keeps_every_earlier_record(tmp_path):
    results.write(tmp_path, record("r1", "failed"))
    results.write(tmp_path, record("r1", "ok", 9.0))
    results.write(tmp_path, record("r2", "ok", 12.0))
    table = results.load(tmp_path)
    assert sorted(table["run_id"]) == ["r1", "r2"]
    assert table.set_index("run_id").loc["r1", "metrics.pydoc/ppl"] == 9.0
    (old,) = (tmp_path / "superseded").iterdir()
    assert json.loads(old.read_text())["status"] == "failed"
    assert not [p for p in (tmp_path / "runs").iterdir() if p.suffix != ".json"]
