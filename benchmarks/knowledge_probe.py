"""Knowledge tasks on one model under several compressions, loaded once, with what the scores hide:
the retrieval generations (length, leading newlines, answer present but not extracted) and how the
scoring fixes of issue 12 move the dense scores. Prints one JSON line per row and a summary table.

    python benchmarks/knowledge_probe.py --model smollm2-135m --max-samples 100 \\
        --rows none magnitude:0.25 magnitude:0.5 wanda:0.5 --tasks fictional_qa trivia trivia_llm_kick facts_mc_text

`--records DIR...` reads finished runs' records instead (every retrieval record keeps its outputs) and
prints the same diagnostics per run and mode, with no model loaded:

    python benchmarks/knowledge_probe.py --records results/

`--path DIR` loads a Hugging Face folder instead of the model config's own source (a GGUF dequantized
once and saved: loading Gemma-3-270M's GGUF takes minutes on a CPU). Rows are `none` or
`<method>:<sparsity>`; calibrated methods use pydoc calibration windows (`--calib 8x512`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from harness import compress, data, models, results, table
from harness.config import Compression
from harness.generation import cut_at_stop, encode_pair, exact_match, normalize_answer
from harness.judge import as_chat, model_config
from harness.methods import load_method
from harness.numerics.sparsity import SparsityPattern
from harness.tasks import build, resolve_specs
from harness.tasks.retrieval_qa import prediction


def retrieval_diagnostics(outputs: list[dict]) -> dict[str, float]:
    """What the open-book scores hide: output length, leading whitespace, the exact match the
    previous extraction (cut at the first newline, not stripped) gave on the same generations, and
    outputs with no line break at all (the answer line ran to the token limit)."""
    raw = [o["output"] for o in outputs]
    golds = [o["answers"] for o in outputs]
    anywhere = [any(f" {a} " in f" {normalize_answer(r)} " for a in map(normalize_answer, g) if a) for r, g in zip(raw, golds)]
    new_em = [exact_match(prediction(r), g) for r, g in zip(raw, golds)]
    old_em = [exact_match(cut_at_stop(r, ["\n"]), g) for r, g in zip(raw, golds)]
    return {
        "words_in_prediction": statistics.mean(len(prediction(r).split()) for r in raw),
        "leading_newline": statistics.mean(r[:1].isspace() and "\n" in r[: len(r) - len(r.lstrip())] for r in raw),
        "empty_old_extraction": statistics.mean(not normalize_answer(cut_at_stop(r, ["\n"])) for r in raw),
        "answer_anywhere_in_output": statistics.mean(anywhere),
        "answer_in_prediction_not_em": statistics.mean(
            a and not e and any(f" {x} " in f" {normalize_answer(prediction(r))} " for x in map(normalize_answer, g) if x)
            for a, e, r, g in zip(anywhere, new_em, raw, golds)
        ),
        "em_old_extraction": statistics.mean(old_em),
        "no_line_break": statistics.mean("\n" not in r.strip() for r in raw),
    }


def record_diagnostics(folders: list[str]) -> None:
    """One JSON line per (run, retrieval task, mode) of the records under `folders`."""
    df = results.load(folders)
    for _, row in df.sort_values("path").iterrows():
        record = results.read_record(Path(row["path"]))
        for task, info in (record.get("tasks") or {}).items():
            if not isinstance(info.get("outputs"), dict):
                continue  # not a retrieval task (its outputs are one list, or none)
            for mode, per_mode in info["outputs"].items():
                line = {"model": row["config.model.name"], "setting": table.setting(row), "task": task, "mode": mode, "prompt_style": info.get("prompt_style", "harness")}
                line |= {k: round(v, 3) for k, v in retrieval_diagnostics(per_mode).items()}
                line |= {k.rsplit("/", 1)[-1]: round(v, 3) for k, v in record["metrics"].items() if k.startswith(f"{task}/{mode}/") and not k.endswith("_stderr")}
                print(json.dumps(line), flush=True)


def encoding_changes(tokenizer, tasks) -> dict[str, float]:
    """Share of (prompt, choice) pairs whose tokens the joint encoding changes, and of chat prompts that
    would have had two BOS tokens: zero means the fix cannot move this model's scores."""
    from harness.tasks.multiple_choice import MultipleChoice, answers

    found = {}
    for task in tasks:
        if isinstance(task, MultipleChoice):
            pairs = [(p, c) for p, s in zip(task.prompts, task.samples) for c in answers(s, task.answer_format)]
            changed = [
                tokenizer(p).input_ids + tokenizer(c, add_special_tokens=False).input_ids != sum(encode_pair(tokenizer, p, c), [])
                for p, c in pairs
            ]
            found[f"{task.name}/pairs_retokenized"] = sum(changed) / len(changed)
    chat = as_chat(tokenizer, [{"role": "user", "content": "Hi"}])
    ids = tokenizer(chat).input_ids
    found["chat_prompt_double_bos"] = float(tokenizer.bos_token_id is not None and ids[:2] == [tokenizer.bos_token_id] * 2)
    return found


def compression_of(row: str) -> tuple[str, Compression]:
    if row == "none":
        return "none", Compression(None, None)
    method, sparsity = row.split(":")
    return method, Compression(None, SparsityPattern(float(sparsity)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", nargs="+", help="results folders: diagnose their retrieval outputs, run nothing")
    parser.add_argument("--model")
    parser.add_argument("--path", help="a Hugging Face folder of the same model (loads faster than a GGUF)")
    parser.add_argument("--rows", nargs="+", default=["none"])
    parser.add_argument("--tasks", nargs="+", default=["fictional_qa"])
    parser.add_argument("--max-samples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--calib", default="8x512")
    parser.add_argument("--out", help="write every row's metrics and task records (with all outputs) here, as JSON")
    args = parser.parse_args()
    if args.records:
        record_diagnostics(args.records)
        return
    if not args.model:
        parser.error("--model or --records is required")

    model_cfg = model_config(args.model)
    if args.path:
        model_cfg = {"name": model_cfg["name"], "path": args.path}
    config = {"max_samples": args.max_samples, "eval_batch_size": args.batch_size, "judge": {}, "data_paths": {}}
    specs = resolve_specs(args.tasks, config)
    tokenizer = models.load_tokenizer(model_cfg)
    tasks = [build(name, spec) for name, spec in specs.items()]
    for task in tasks:
        task.prepare(tokenizer)
    print(json.dumps({"model": args.model, "encoding_changes": encoding_changes(tokenizer, tasks)}), flush=True)
    start = time.perf_counter()
    model = models.load_model(model_cfg, "cpu", torch.float32, seed=0)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"loaded in {time.perf_counter() - start:.0f} s", flush=True)
    n_samples, seqlen = map(int, args.calib.split("x"))
    rows = []
    for row in args.rows:
        model.load_state_dict(dense)
        method, compression = compression_of(row)
        calibration = None
        method_obj = load_method(method, {})
        if method_obj.needs_calibration:
            calibration = data.calibration_windows(tokenizer, "pydoc", n_samples=n_samples, seqlen=seqlen, seed=0)
        stats = compress.compress(model, method_obj, compression, calibration, "cpu") if method != "none" else {}
        metrics, infos = {}, {}
        for task in tasks:
            t = time.perf_counter()
            task_metrics, infos[task.name] = task.evaluate(model)
            metrics |= task_metrics | {f"{task.name}/eval_s": round(time.perf_counter() - t, 1)}
            outputs = infos[task.name].get("outputs")
            if isinstance(outputs, dict):  # retrieval: per mode
                for mode, per_mode in outputs.items():
                    metrics |= {f"{task.name}/{mode}/{k}": v for k, v in retrieval_diagnostics(per_mode).items()}
        result = {"model": args.model, "row": row, "sparsity": stats.get("sparsity", 0.0), "metrics": metrics}
        print(json.dumps(result), flush=True)
        rows.append(result | {"tasks": infos})
        if args.out:  # after every row: a long run keeps what it finished
            with open(args.out, "w") as f:
                json.dump(rows, f)


if __name__ == "__main__":
    main()
