"""Text corpora for perplexity (and, later, calibration).

`pydoc` ships with Python (the standard library's pydoc topics: English technical prose) and needs no
network. `wikitext2` and `c4` are read from the Hugging Face hub exactly as GPTQ, SparseGPT and Wanda
read them, or from local files in the hub's own format (`data_path=`) on offline clusters.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random

import torch

from harness import hub
from dataclasses import dataclass

log = logging.getLogger("harness")


class DataUnavailable(RuntimeError):
    """A dataset could not be read; the message says why and what to do instead."""


@dataclass(frozen=True)
class Corpus:
    name: str
    text: str
    separator: str  # how documents were joined (part of the protocol)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def pydoc_corpus(split: str = "test") -> Corpus:
    """Topics in sorted order, alternately to `test` (evaluation) and `train` (calibration), so that a
    calibrated method never sees the text it is scored on."""
    from pydoc_data.topics import topics

    keys = sorted(topics)[{"test": 0, "train": 1}[split] :: 2]
    return Corpus("pydoc", "\n\n".join(topics[key] for key in keys), "\n\n")


def wikitext2_corpus(split: str = "test", data_path: str | None = None) -> Corpus:
    """GPTQ: load_dataset('wikitext', 'wikitext-2-raw-v1', split='test') (now Salesforce/wikitext), rows joined with '\\n\\n'."""
    rows = load_hub_dataset("wikitext2", ("Salesforce/wikitext", "wikitext-2-raw-v1"), split, data_path, "parquet")
    return Corpus("wikitext2", "\n\n".join(rows["text"]), "\n\n")


def c4_rows(split: str, data_path: str | None = None):
    """GPTQ's C4 files: the first shard of the English train or validation split."""
    shard = {"validation": "en/c4-validation.00000-of-00008.json.gz", "train": "en/c4-train.00000-of-01024.json.gz"}
    return load_hub_dataset("c4", ("allenai/c4",), split, data_path, "json", data_files={split: shard[split]})


def c4_corpus(split: str = "validation", data_path: str | None = None) -> Corpus:
    """GPTQ's C4 evaluation text: the validation shard's first 1100 documents joined by ' '. (Calibration
    draws windows inside single train documents instead: sample_windows.)"""
    return Corpus("c4", " ".join(c4_rows(split, data_path)[:1100]["text"]), " ")


def pileval_corpus(split: str = "validation", data_path: str | None = None) -> Corpus:
    """AWQ's calibration data: mit-han-lab/pile-val-backup (the Pile's validation split, val.jsonl.zst),
    shuffled with AWQ's seed 42; its first 2,000 documents, stripped, joined by '\n\n'. AWQ itself keeps
    128 documents of at most 512 tokens and cuts 512-token blocks; here windows are drawn from the
    joined text as for every other calibration corpus (calib.seqlen, calib.n_samples)."""
    rows = load_hub_dataset("pileval", ("mit-han-lab/pile-val-backup",), split, data_path, "json", file_key="val")
    rows = rows.shuffle(seed=42).select(range(min(2000, len(rows))))
    return Corpus("pileval", "\n\n".join(text.strip() for text in rows["text"]), "\n\n")


HUB_CORPORA = {"wikitext2": wikitext2_corpus, "c4": c4_corpus, "pileval": pileval_corpus}
CORPORA = ("pydoc", *HUB_CORPORA)


def load_corpus(name: str, split: str | None = None, data_path: str | None = None) -> Corpus:
    split_arg = {"split": split} if split else {}
    if name == "pydoc":
        return pydoc_corpus(**split_arg)
    return HUB_CORPORA[name](**split_arg, data_path=data_path)


def calibration_windows(
    tokenizer, dataset: str, n_samples: int, seqlen: int, seed: int, data_path: str | None = None
) -> torch.Tensor:
    """[n_samples, seqlen] token ids (sample_windows without its coverage statistics)."""
    return sample_windows(tokenizer, dataset, n_samples, seqlen, seed, data_path)[0]


def sample_windows(
    tokenizer, dataset: str, n_samples: int, seqlen: int, seed: int, data_path: str | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """[n_samples, seqlen] token ids drawn as the protocols draw them, and how much text they cover.

    c4: GPTQ's get_c4 (also SparseGPT's and Wanda's): for each window a random document of the train
    shard, redrawn until it is longer than seqlen tokens, and a random window inside it (Python's
    `random` seeded with `seed`). Other corpora: random windows of the joined training text, as
    GPTQ's get_wikitext2 (a seeded torch generator). Either way the same seed gives the same windows.

    The statistics: calib_distinct_tokens (token positions covered by at least one window) and
    calib_window_tokens (n_samples * seqlen). A warning says when windows overlap heavily (fewer than
    half of their tokens distinct): e.g. pydoc's train half holds about 25 windows of 2048 tokens."""
    split = {"c4": "train", "wikitext2": "train", "pydoc": "train", "pileval": "validation"}[dataset]
    if dataset == "c4":
        windows, spans = c4_windows(tokenizer, c4_rows("train", data_path)["text"], n_samples, seqlen, seed)
        available = None
    else:
        ids = tokenizer(load_corpus(dataset, split, data_path).text, return_tensors="pt").input_ids[0]
        if ids.numel() <= seqlen:
            raise DataUnavailable(f"calibration dataset {dataset}: {ids.numel()} tokens, fewer than seqlen={seqlen}")
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, ids.numel() - seqlen, (n_samples,), generator=generator).tolist()
        windows = torch.stack([ids[s : s + seqlen] for s in starts])
        spans, available = [(0, s) for s in starts], ids.numel()
    stats = {"calib_distinct_tokens": distinct_tokens(spans, seqlen), "calib_window_tokens": n_samples * seqlen}
    if stats["calib_distinct_tokens"] < 0.5 * stats["calib_window_tokens"]:
        log.warning(
            "calibration windows overlap heavily: %d distinct tokens in %d windows of %d (%d tokens)%s",
            stats["calib_distinct_tokens"], n_samples, seqlen, stats["calib_window_tokens"],
            "" if available is None else f"; the {dataset} {split} text holds {available} tokens, {available // seqlen} windows without overlap",
        )
    return windows, stats


def c4_windows(tokenizer, documents, n_samples: int, seqlen: int, seed: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """GPTQ's get_c4 sampling over `documents`; returns the windows and their (document, start)."""
    rng = random.Random(seed)
    windows, spans = [], []
    for _ in range(n_samples):
        for _attempt in range(100 * len(documents)):
            doc = rng.randint(0, len(documents) - 1)
            ids = tokenizer(documents[doc], return_tensors="pt").input_ids[0]
            if ids.numel() > seqlen:
                break
        else:
            raise DataUnavailable(f"calibration dataset c4: no document longer than seqlen={seqlen} tokens")
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start : start + seqlen])
        spans.append((doc, start))
    return torch.stack(windows), spans


def distinct_tokens(spans: list[tuple[int, int]], seqlen: int) -> int:
    """Token positions covered by windows of `seqlen` starting at (document, start) `spans`."""
    covered, last = 0, {}
    for doc, start in sorted(spans):
        end = last.get(doc, -1)
        covered += seqlen - max(0, min(seqlen, end - start))
        last[doc] = max(end, start + seqlen)
    return covered


def load_hub_dataset(name, hub_args, split, data_path, local_format, data_files=None, file_key=None):
    """Rows of a hub dataset (`load_dataset(*hub_args)`), or of local files in the hub's own format
    (`local_format`: parquet, json) under `data_path` whose names carry the split (or `file_key`,
    where the hub's file names abbreviate it)."""
    import datasets

    if data_path:
        key = file_key or split
        files = sorted(f for f in _files_under(data_path) if key in os.path.basename(f))  # hub names carry the split
        if not files:
            raise DataUnavailable(f"dataset {name}: no files for split {split!r} under data_path={data_path}")
        return datasets.load_dataset(local_format, data_files={split: files}, split=split)
    offline = hub.offline_reason()
    if offline:
        raise DataUnavailable(
            f"dataset {name} is read from the Hugging Face hub ({'/'.join(hub_args)}), but {offline}. "
            f"Pass data_paths.{name}= with the hub's files, or use the offline corpus (tasks=[pydoc])."
        )
    try:
        return datasets.load_dataset(*hub_args, split=split, data_files=data_files)
    except Exception as err:  # the hub client raises many types for 'offline'
        raise DataUnavailable(
            f"dataset {name} is read from the Hugging Face hub ({'/'.join(hub_args)}), which could not be "
            f"reached from this machine ({type(err).__name__}). Offline: pass data_paths.{name}= with the hub's "
            f"files, or use the offline corpus (tasks=[pydoc])."
        ) from err


def _files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return [os.path.join(root, f) for root, _, names in os.walk(path) for f in names]
