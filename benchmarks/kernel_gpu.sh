#!/usr/bin/env bash
# One lent-GPU call for the kernels: install the carried wheels, then each stage named on the command
# line, each under its own time limit so that one slow stage cannot take the others' output:
#   tests    tests/test_kernels_gpu.py (TESTS_K: a -k selection)    layers   the layer sweep of benchmarks/kernel_bench.py
#   e2e      end-to-end decode (E2E_BITS; E2E_FLAGS: more kernel_bench flags)    record   one `python -m harness ... latency=true` run
#   gemv     old (v2) vs new GEMV, benchmarks/gemv_bench.py (GEMV_BITS, GEMV_TOKENS; GEMV_CONFIGS: more to time)
#   sass     SASS instructions per weight, benchmarks/kernel_sass.py (no GPU needed; here for the record)
#   ncu      Nsight Compute --set full on the batch-1 GEMV at 14336x4096 W4/W3/W2 (new, then v2), summarized
# Carried: .whl/ (hydra-core, omegaconf, antlr4: the image lacks them) and .device/pylib (bitsandbytes,
# its CUDA 13.0 library only). Output goes to $OUT (log, tables, the record).
set -uo pipefail
OUT=${OUT:-/tmp/out}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/.device/pylib PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
for stage in "$@"; do
  echo "=== $stage $(date -u +%T)"
  case "$stage" in
  tests)  timeout "${TESTS_S:-170}" python3 -m pytest -q -x tests/test_kernels_gpu.py -k "${TESTS_K:-}" 2>&1 | tail -25 ;;
  layers) timeout "${LAYERS_S:-260}" python3 benchmarks/kernel_bench.py --no-e2e --out "$OUT/layers.md" ;;
  e2e)    timeout "${E2E_S:-200}" python3 benchmarks/kernel_bench.py --no-layers --e2e-bits "${E2E_BITS:-4,3,2}" ${E2E_FLAGS:-} --out "$OUT/e2e.md" ;;
  gemv)   timeout "${GEMV_S:-330}" python3 benchmarks/gemv_bench.py --bits "${GEMV_BITS:-4,3,2}" --tokens "${GEMV_TOKENS:-1,16}" --configs "${GEMV_CONFIGS:-}" --out "$OUT/gemv.md" ;;
  sass)   timeout "${SASS_S:-120}" python3 benchmarks/kernel_sass.py --bits 4,3,2 --two-four > "$OUT/sass.md"; cat "$OUT/sass.md" ;;
  ncu)
    NCU=${NCU:-$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)}
    timeout "${NCU_S:-200}" "$NCU" --target-processes all --profile-from-start off --set full --clock-control none \
      -k regex:_gemv_kernel -f -o "$OUT/gemv_ncu" python3 benchmarks/gemv_profile.py run 2>&1 | grep -v "^==PROF==" | tail -12
    "$NCU" --import "$OUT/gemv_ncu.ncu-rep" --page raw --csv > "$OUT/gemv_ncu.csv" 2>/dev/null
    python3 benchmarks/gemv_profile.py summary "$OUT/gemv_ncu.csv"
    ;;
  record)
    timeout "${RECORD_S:-240}" python3 -m harness model=tiny-random method=rtn bits=4 group_size=32 latency=true \
      latency_prompt_len=256 device=cuda results_dir=/tmp/records "tasks=[pydoc]" max_eval_tokens=2048 2>&1 | tail -5
    cp /tmp/records/runs/*.json "$OUT/" 2>/dev/null
    python3 -c "import json,glob; [print(json.dumps(json.load(open(p)).get('latency'), indent=1)) for p in glob.glob('/tmp/records/runs/*.json')]"
    ;;
  *) echo "unknown stage $stage" ;;
  esac
done
