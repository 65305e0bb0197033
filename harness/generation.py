"""Batched greedy generation, choice log-likelihoods, and answer scoring shared by the knowledge tasks.

Prompts are encoded with the tokenizer's special tokens (a BOS where the model wants one), except
that a prompt whose text already starts with the BOS token (a chat template that writes it) gets no
second one.

Batches are left-padded: every prompt ends at the last column, so the next token of every row is
predicted at the same position, and positions count from each row's first real token (a padded row
sees exactly what it would see alone). Prompts are sorted by length before batching, so padding
stays small, and results come back in the caller's order.

Scoring follows SQuAD's answer normalization (lowercase, drop punctuation and the articles a/an/the,
collapse whitespace): exact match and token F1 take the best over the gold aliases; the lenient
LLM-KICK rule counts an answer right when any normalized alias appears, as whole words, inside the
normalized output.
"""
from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterator, Sequence

import torch
from transformers import GenerationConfig

from harness.progress import progress

# --- scoring -------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalization: lowercase, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    prediction = normalize_answer(prediction)
    return float(any(prediction == normalize_answer(gold) for gold in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1 of the prediction against its best-matching gold alias."""
    return max((_f1(normalize_answer(prediction).split(), normalize_answer(gold).split()) for gold in golds), default=0.0)


def _f1(predicted: list[str], gold: list[str]) -> float:
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, golds: Sequence[str]) -> float:
    """LLM-KICK's lenient rule: some normalized gold alias occurs in the normalized output. Matched as
    whole words, so the alias 'ra' is not found inside 'camera'."""
    padded = f" {normalize_answer(prediction)} "
    return float(any(alias and f" {alias} " in padded for alias in map(normalize_answer, golds)))


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text up to the first stop string (the answer, not what the model rambles on with)."""
    ends = [text.find(stop) for stop in stops if stop in text]
    return text[: min(ends)] if ends else text


# --- batching ------------------------------------------------------------------------------------


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The prompt's token ids with the tokenizer's special tokens, unless the text already starts with
    the BOS token: a chat template that writes `{{ bos_token }}` (Gemma's) would otherwise get two."""
    bos = tokenizer.bos_token
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair` for causal models: trailing spaces of the context move to the
    continuation, context + continuation are tokenized together and split at the context's length.
    Tokenizing the continuation alone would give SentencePiece tokenizers a spurious leading-space
    piece (' A' -> '▁', '▁A') that the joined text never has."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = encode_prompt(tokenizer, context)
    return context_ids, encode_prompt(tokenizer, context + continuation)[len(context_ids) :]


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, position ids) of rows right-aligned to the longest one."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def _by_length(rows: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of rows in batches of similar length (longest first, so memory peaks at once)."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _device(model) -> torch.device:
    return next(model.parameters()).device


# --- generation ----------------------------------------------------------------------------------


@torch.no_grad()
def greedy_generate(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8, stop: Sequence[str] = ()
) -> list[str]:
    """The greedy continuation of every prompt (special tokens dropped), cut at the first stop string.
    A row stops growing once it has produced a stop string or the end-of-text token; the batch stops
    when every row has."""
    encoded = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    pad = pad_id(tokenizer)
    # A fresh config, not the model's own: its sampling defaults must not leak into a greedy run.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id, stop_strings=list(stop) or None,
    )
    outputs: list[str] = [""] * len(prompts)
    device = _device(model)
    for batch in progress(_by_length(encoded, batch_size), "generation", -(-len(encoded) // batch_size), unit="batch"):
        ids, mask, _ = left_padded([encoded[i] for i in batch], pad)
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config, tokenizer=tokenizer
        )
        for i, row in zip(batch, generated[:, ids.shape[1] :]):
            outputs[i] = cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop)
    return outputs


@torch.no_grad()
def choice_logprobs(
    model, tokenizer, requests: Sequence[tuple[str, Sequence[str]]], *, batch_size: int = 8
) -> list[list[float]]:
    """log p(choice | context), summed over the choice's tokens, for every (context, choices) request.

    Each pair is encoded as lm-eval encodes it (`encode_pair`: tokenized together, split at the
    context's length). The model reads context + choice without its last token; choices of one token
    that share a context (' A', ' B', ...) therefore share one forward. Only the last positions go
    through the output head."""
    wanted: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}  # model input -> (request, choice, tokens)
    for r, (context, choices) in enumerate(requests):
        for c, choice in enumerate(choices):
            context_ids, target = encode_pair(tokenizer, context, choice)
            if not target:
                raise ValueError(f"choice {choice!r} is empty once tokenized")
            wanted.setdefault(tuple(context_ids + target[:-1]), []).append((r, c, target))
    inputs = list(wanted)
    keep = max(len(target) for scored in wanted.values() for *_, target in scored)
    device = _device(model)
    result = [[0.0] * len(choices) for _, choices in requests]
    for batch in progress(_by_length(inputs, batch_size), "choice scoring", -(-len(inputs) // batch_size), unit="batch"):
        ids, mask, positions = left_padded([inputs[i] for i in batch], pad_id(tokenizer))
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
            logits_to_keep=keep, use_cache=False,
        ).logits
        for i, log_probs in zip(batch, torch.log_softmax(logits.float(), dim=-1)):
            for r, c, target in wanted[inputs[i]]:
                predicted = log_probs[-len(target) :]  # left padding: the last positions predict the choice
                result[r][c] = predicted.gather(1, torch.tensor(target, device=device).unsqueeze(1)).sum().item()
    return result
