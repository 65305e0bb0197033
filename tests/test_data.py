"""Corpus loaders: the offline corpus, the hub loaders' parsing on local files in the hub's format,
and a clear, fast error when the hub cannot be reached."""
import gzip
import json
import logging

import pandas as pd
import pytest
import torch

from harness import data
from harness.models import byte_tokenizer


def test_pydoc_halves_are_disjoint_and_stable():
    test, train = data.pydoc_corpus("test"), data.pydoc_corpus("train")
    assert len(test.text) > 100_000 and len(train.text) > 100_000
    assert test.text[:2000] not in train.text
    assert test.sha256 == data.pydoc_corpus("test").sha256


def test_wikitext2_parses_hub_parquet(tmp_path):
    rows = ["", " = Valkyria Chronicles III = \n", "", " Senjō no Valkyria 3 is a game . \n"]
    folder = tmp_path / "wikitext-2-raw-v1"
    folder.mkdir()
    pd.DataFrame({"text": rows}).to_parquet(folder / "test-00000-of-00001.parquet")
    pd.DataFrame({"text": ["training text"]}).to_parquet(folder / "train-00000-of-00001.parquet")
    corpus = data.load_corpus("wikitext2", "test", str(tmp_path))
    assert corpus.text == "\n\n".join(rows)


def test_c4_parses_hub_json_gz_and_keeps_first_1100_documents(tmp_path):
    docs = [{"text": f"document {i}", "timestamp": "2019-04-25T12:57:54Z", "url": f"https://x/{i}"} for i in range(1200)]
    shard = tmp_path / "en" / "c4-validation.00000-of-00008.json.gz"
    shard.parent.mkdir()
    with gzip.open(shard, "wt") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    corpus = data.load_corpus("c4", "validation", str(tmp_path))
    assert corpus.text == " ".join(f"document {i}" for i in range(1100))


def test_offline_hub_dataset_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(data.DataUnavailable, match="offline"):  # benchmarks/fail_fast.py times it
        data.load_corpus("wikitext2", "test")


def test_calibration_windows_are_seeded_slices_of_the_train_half():
    tok = byte_tokenizer()
    a = data.calibration_windows(tok, "pydoc", n_samples=8, seqlen=64, seed=0)
    b = data.calibration_windows(tok, "pydoc", n_samples=8, seqlen=64, seed=0)
    c = data.calibration_windows(tok, "pydoc", n_samples=8, seqlen=64, seed=1)
    assert a.shape == (8, 64) and a.equal(b) and not a.equal(c)
    train = tok.decode(tok(data.pydoc_corpus("train").text).input_ids)
    assert tok.decode(a[0]) in train


def test_pileval_parses_hub_jsonl_shuffled_as_awq(tmp_path):
    docs = [{"text": f" document {i} \n", "meta": {"pile_set_name": "Pile-CC"}} for i in range(2500)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    corpus = data.load_corpus("pileval", "validation", str(tmp_path))
    texts = corpus.text.split("\n\n")
    assert len(texts) == 2000 and len(set(texts)) == 2000  # the first 2,000 after shuffling
    assert texts != [f"document {i}" for i in range(2000)] and all(t.startswith("document ") for t in texts)
    assert corpus.text == data.load_corpus("pileval", "validation", str(tmp_path)).text  # seed 42, every time
    windows = data.calibration_windows(byte_tokenizer(), "pileval", 4, 32, seed=0, data_path=str(tmp_path))
    assert windows.shape == (4, 32)


def _c4_train_shard(tmp_path, texts):
    shard = tmp_path / "en" / "c4-train.00000-of-01024.json.gz"
    shard.parent.mkdir(parents=True)
    with gzip.open(shard, "wt") as f:
        f.writelines(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": "https://x"}) + "\n" for t in texts)
    return str(tmp_path)


def test_c4_calibration_windows_lie_inside_single_long_documents_as_gptq_draws_them(tmp_path):
    """GPTQ's get_c4: a random document of the train shard, redrawn until longer than seqlen, and a
    random window inside it; short documents are never used and no window crosses a boundary."""
    import random

    texts = [f"{chr(97 + i % 26)}" * length for i, length in enumerate([10, 300, 64, 40, 500, 65, 90])]
    tok = byte_tokenizer()
    windows, stats = data.sample_windows(tok, "c4", n_samples=12, seqlen=64, seed=3, data_path=_c4_train_shard(tmp_path, texts))
    assert windows.shape == (12, 64)
    long_enough = {t[0] for t in texts if len(tok(t).input_ids) > 64}
    for window in windows:
        text = tok.decode(window)
        assert len(set(text)) == 1 and text[0] in long_enough  # one document's letter only
    # The reference's draw, transcribed (datautils.get_c4), gives the same windows.
    rng, expected = random.Random(3), []
    for _ in range(12):
        while True:
            i = rng.randint(0, len(texts) - 1)
            ids = tok(texts[i], return_tensors="pt").input_ids
            if ids.shape[1] > 64:
                break
        start = rng.randint(0, ids.shape[1] - 64 - 1)
        expected.append(ids[0, start : start + 64])
    assert windows.equal(torch.stack(expected))
    assert 64 < stats["calib_distinct_tokens"] <= stats["calib_window_tokens"] == 12 * 64


def test_overlapping_calibration_windows_are_counted_and_warned_about(caplog):
    tok = byte_tokenizer()
    train_bytes = len(tok(data.pydoc_corpus("train").text).input_ids)
    with caplog.at_level(logging.WARNING, logger="harness"):
        _, few = data.sample_windows(tok, "pydoc", n_samples=4, seqlen=64, seed=0)
    assert few["calib_distinct_tokens"] <= 4 * 64 and "overlap" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="harness"):
        _, many = data.sample_windows(tok, "pydoc", n_samples=64, seqlen=train_bytes // 8, seed=0)
    assert many["calib_distinct_tokens"] <= train_bytes < many["calib_window_tokens"] / 2
    assert "calibration windows overlap heavily" in caplog.text and f"{train_bytes // (train_bytes // 8)} windows without overlap" in caplog.text
