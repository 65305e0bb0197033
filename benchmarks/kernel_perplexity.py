"""Perplexity through the real kernels against simulated compression, on one GPU (issue 11, item 4).

For each setting: load the model, compress it as the pipeline does (weights rounded / zeroed, stored
dense), score pydoc perplexity, convert every compressed linear to its kernel backend (packed weights),
score again on the same windows. The two must agree within bf16 rounding of the layer outputs.

    python benchmarks/kernel_perplexity.py model.path=/root/smollm2-hf model.package=null model.gguf_file=null
"""
from __future__ import annotations

import sys

from hydra import compose, initialize_config_module

from harness import compress, kernels, models
from harness.run import calibration_windows, resolve
from harness.tasks import build as build_task

SETTINGS = {
    "rtn w4g64": ["method=rtn", "bits=4", "group_size=64"],
    "rtn w3g64": ["method=rtn", "bits=3", "group_size=64"],
    "magnitude 2:4": ["method=magnitude", "sparsity_pattern=2:4"],
    "sparsegpt 2:4 + w4g64": ["method=sparsegpt", "sparsity_pattern=2:4", "bits=4", "group_size=64", "calib.n_samples=32"],
    "gptq w4g64": ["method=gptq", "bits=4", "group_size=64", "calib.n_samples=32"],
}


def perplexity_pair(overrides: list[str]) -> tuple[float, float, str]:
    with initialize_config_module("harness.conf", version_base="1.3"):
        cfg = compose("config", overrides=["device=cuda", "tasks=[pydoc]", "max_eval_tokens=1000000", *overrides])
    exp, method, specs = resolve(cfg)
    task = build_task("pydoc", specs["pydoc"])
    tokenizer = models.load_tokenizer(exp.config["model"])
    task.prepare(tokenizer)
    calibration = calibration_windows(exp, method, tokenizer)[0]
    model = models.load_model(exp.config["model"], exp.device, exp.dtype, exp.config["seed"])
    compress.compress(model, method, exp.compression, calibration, exp.device)
    simulated = task.evaluate(model)[0]["pydoc/ppl"]
    options = {k: v for k, v in exp.config["method"].items() if k != "name"}
    backend, reason = kernels.choose(exp.compression, exp.config["method"]["name"], options)
    if backend is None:
        return simulated, float("nan"), f"no kernel: {reason}"
    kernels.convert(model, compress.compressible_layers(model), backend, exp.compression, options)
    return simulated, task.evaluate(model)[0]["pydoc/ppl"], "/".join(kernels.kernel_name(backend))


def main(model_overrides: list[str]) -> None:
    print("| setting | simulated ppl | kernel ppl | relative difference | kernel |")
    print("|---|---|---|---|---|")
    for name, overrides in SETTINGS.items():
        simulated, real, kernel = perplexity_pair(model_overrides + overrides)
        print(f"| {name} | {simulated:.4f} | {real:.4f} | {(real - simulated) / simulated:+.2e} | {kernel} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
