#!/usr/bin/env bash
# Everything the spine needs from one lent GPU machine, in as few calls as possible.
#   bash benchmarks/gpu_run.sh check    install, GPU tests, tiny model on CUDA; keeps .device/a (model part 1)
#   bash benchmarks/gpu_run.sh smollm2  joins part 1 with .device/b (part 2) and runs the SmolLM2 table on CUDA
#   bash benchmarks/gpu_run.sh speed    calibration engine at Llama-3-8B shape (benchmarks/calibration_speed.py)
# The GPU image lacks hydra-core, omegaconf, antlr4 and gguf: their wheels travel in .whl/. SmolLM2's GGUF
# (98 MB) is larger than one transfer, so it travels in two halves over two consecutive calls.
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /root/smollm2
if ! python3 -c "import hydra, gguf" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

case "${1:-check}" in
speed)
  python3 benchmarks/calibration_speed.py --layers 4 2>&1 | grep -v "calibration block"
  timeout 420 python3 benchmarks/calibration_speed.py 2>&1 | grep -v "calibration block" || echo "full 32-block run stopped at the time limit"
  ;;
check)
  cp .device/a/gguf.part00 /root/smollm2/
  python3 -m pytest -q tests/test_gpu.py tests/test_rtn.py tests/test_magnitude.py tests/test_perplexity.py 2>&1 | tail -3
  ;;
smollm2)
  cat /root/smollm2/gguf.part00 .device/b/gguf.part01 > /root/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  (cd /root/smollm2 && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf) | diff - <(sed 's#  .*/#  #' .device/gguf.sha256)
  SMOL=(model.package=null model.path=/root/smollm2 device=cuda max_eval_tokens=1000000 results_dir="$OUT/results")
  RUNS=("method=none" "method=rtn bits=4 group_size=64" "method=rtn bits=3 group_size=64"
        "method=rtn bits=2 group_size=64" "method=magnitude sparsity=0.5" "method=magnitude sparsity_pattern=2:4")
  [ "${2:-}" = calibrated ] && RUNS=("method=none" "method=rtn bits=3 group_size=64" "method=gptq bits=3 group_size=64"
        "method=awq bits=3 group_size=64" "method=magnitude sparsity=0.5" "method=wanda sparsity=0.5"
        "method=sparsegpt sparsity=0.5" "method=sparsegpt sparsity_pattern=2:4" "method=sparsegpt sparsity=0.5 bits=4 group_size=64")
  for run in "${RUNS[@]}"; do
    # shellcheck disable=SC2086
    python3 -m harness "${SMOL[@]}" calib.n_samples="${CALIB_SAMPLES:-128}" $run 2>&1 | grep -E "INFO\] - (pydoc|compressed)|Error|error" || true
  done
  [ "${2:-}" = calibrated ] || python3 -m harness "${SMOL[@]}" method=rtn bits=4 group_size=128 2>&1 | grep error || true
  python3 - "$OUT/results" <<'PY'
import sys
from harness import results
df = results.load(sys.argv[1])
cols = ["config.method.name", "config.bits", "config.group_size", "config.sparsity_pattern", "config.sparsity",
        "metrics.pydoc/ppl", "stats.bits_per_weight", "timings.load_s", "timings.compress_s", "timings.eval_pydoc_s",
        "stats.calib_peak_cuda_bytes"]
print(df[[c for c in cols if c in df]].to_string())
PY
  ;;
esac
