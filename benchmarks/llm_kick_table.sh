#!/usr/bin/env bash
# The LLM-KICK comparison on the embedded model: perplexity and the offline knowledge tasks side by side
# for dense, pruning and 3-bit quantization. Prints the table from the records.
#   bash benchmarks/llm_kick_table.sh [results_dir] [max_samples]      (CPU: ~4 min per row on 2 cores)
set -euo pipefail
DIR=${1:-results/llm_kick}
N=${2:-40}
COMMON=(model=smollm2-135m "tasks=[pydoc,trivia,facts_mc_text,fictional_qa]" max_samples="$N" max_eval_tokens=4096
        calib.n_samples=16 calib.seqlen=512 results_dir="$DIR")
for run in "method=none" "method=magnitude sparsity=0.5" "method=wanda sparsity=0.5" "method=sparsegpt sparsity=0.5" \
           "method=gptq bits=3 group_size=64" "method=rtn bits=3 group_size=64" "method=magnitude sparsity=0.25"; do
  # shellcheck disable=SC2086
  python -m harness "${COMMON[@]}" $run 2>&1 | grep -E "INFO\] - (run|config)|error" || true
done
python benchmarks/results_table.py "$DIR"
