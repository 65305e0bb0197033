#!/usr/bin/env bash
# Everything the harness needs from one lent GPU machine, in as few calls as possible. Stages, each a
# word on the command line, run in the order given:
#   check      GPU tests (tests/test_gpu.py and the spine's numerical tests) on CUDA
#   speed      calibration engine at Llama-3-8B shape, all 32 blocks (benchmarks/calibration_speed.py);
#              SPEED_RUNS picks the runs (default: both)
#   smollm2    join SmolLM2's GGUF halves (.device/a, .device/b; they may come in different calls) and
#              save the dequantized model as a Hugging Face folder, so each run loads in seconds
#   table      the SmolLM2 sweeps below on CUDA, resumable: results live in /root/results (they
#              survive between calls while the machine stays warm; finished runs are skipped) and
#              are copied to $OUT; TABLE_DEADLINE_S (default 520) stops starting new sweeps.
#              ONLY_SWEEPS (one per line) replaces the list; TASKS, MAX_SAMPLES (300), EVAL_BS (null: each task's own) and
#              CALIB_SAMPLES (32) set the tasks, questions per task, batch and calibration windows.
#              benchmarks/NOTES.md lists the exact commands behind its tables.
# The GPU image lacks hydra-core, omegaconf, antlr4, gguf, hqq (+ einops, termcolor) and the offline
# task data packages: their wheels travel in .whl/. bitsandbytes (43 MB wheel) travels unpacked with
# only its CUDA 13.0 library, in .device/pylib. SmolLM2's GGUF (98 MB) is larger than one transfer.
set -euo pipefail
OUT=${OUT:-/tmp/out}
MODEL_DIR=/root/smollm2
HF_DIR=/root/smollm2-hf
RESULTS=/root/results
mkdir -p "$OUT" "$MODEL_DIR" "$RESULTS"
SITE=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl 2>&1 | grep -v "already installed" || true
[ -d .device/pylib ] && cp -r .device/pylib/. "$SITE/"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
for part in .device/a/gguf.part00 .device/b/gguf.part01; do [ -f "$part" ] && cp "$part" "$MODEL_DIR/"; done
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

for stage in "${@:-check}"; do
  echo "=== $stage"
  case "$stage" in
  check)
    python3 -m pytest -q tests/test_gpu.py tests/test_rtn.py tests/test_magnitude.py tests/test_perplexity.py 2>&1 | tail -4
    ;;
  speed)
    python3 benchmarks/calibration_speed.py --runs "${SPEED_RUNS:-gptq w4g128,awq w4g128,sparsegpt 50%,wanda 50%}" 2>&1 | grep -v "calibration block"
    ;;
  smollm2)
    [ -d "$HF_DIR" ] && continue
    cat "$MODEL_DIR/gguf.part00" "$MODEL_DIR/gguf.part01" > "$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
    (cd "$MODEL_DIR" && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf) | diff - <(sed 's#  .*/#  #' .device/gguf.sha256)
    python3 - "$MODEL_DIR" "$HF_DIR" <<'PY'
import sys, torch
from harness import models
cfg = {"name": "smollm2-135m", "package": None, "path": sys.argv[1], "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
model = models.load_model(cfg, "cpu", torch.float32, 0)
model.hf_quantizer = None  # the weights are dequantized floats now; transformers still calls it GGUF
model.config.__dict__.pop("quantization_config", None)
model.save_pretrained(sys.argv[2])
models.load_tokenizer(cfg).save_pretrained(sys.argv[2])
print("saved", sys.argv[2])
PY
    ;;
  table)
    start=$SECONDS
    for sweep in "${SWEEPS[@]}"; do
      if (( SECONDS - start > ${TABLE_DEADLINE_S:-520} )); then echo "deadline: not started: $sweep"; continue; fi
      # shellcheck disable=SC2086
      python3 -m harness -m "${SMOL[@]}" $sweep 2>&1 | grep -E "INFO\] - (pydoc|compressed|run .* (ok|failed))|Error|error" || true
    done
    cp -r "$RESULTS" "$OUT/"
    python3 benchmarks/results_table.py "$RESULTS"
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
