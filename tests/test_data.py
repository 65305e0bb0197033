"""Corpus loaders: the offline corpus, the hub loaders' parsing on local files in the hub's format,
and a clear, fast error when the hub cannot be reached."""
import gzip
import json
import time

import pandas as pd
import pytest

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
    start = time.perf_counter()
    with pytest.raises(data.DataUnavailable, match="offline"):
        data.load_corpus("wikitext2", "test")
    assert time.perf_counter() - start < 10


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
