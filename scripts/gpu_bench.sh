#!/bin/bash
# One prepared GPU session (the `device` tool: one H200): kernel correctness against the PyTorch reference on
# the GPU, `llmquant bench kernels --json` (box W4A16 / W4A4 kernels vs torch BF16/FP16, measured), and
# `llmquant bench decode` (end-to-end greedy decode, random-weight models of real shapes, vs FP16).
# Usage: OUT=/some/dir bash scripts/gpu_bench.sh     (every step has its own timeout; outputs land in $OUT)
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
cd "$(dirname "$0")/.."
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv;
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1 || { echo "install failed"; tail -5 "$OUT/install.log"; }
python3 -c "import llmquant.cli, llmquant.kernels.box_w4a16" || exit 1
step() {  # step NAME SECONDS CMD...: run with a timeout, stdout+stderr to $OUT/NAME.log, print rc + seconds
  local name=$1 secs=$2; shift 2; local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "== $name rc=$rc $((SECONDS - t0))s"
}
step pytest_kernels 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_box.py tests/test_box_w4a4.py \
  tests/test_kernels_box_dispatch.py tests/test_kernels_hadamard.py
tail -3 "$OUT/pytest_kernels.log"
step bench_kernels 170 python3 -m llmquant.cli bench kernels --json
step decode_smollm2 110 python3 -m llmquant.cli bench decode --shape smollm2-135m --json \
  --config configs/smollm2-135m-e8-w4a16.yaml --config configs/smollm2-135m-e8-w4a4kv4.yaml \
  --set weights.algorithm=rtn --set weights.box_variant=int
step decode_llama1b 110 python3 -m llmquant.cli bench decode --shape llama-3.2-1b --json \
  --config configs/smollm2-135m-e8-w4a16.yaml --set weights.algorithm=rtn --set weights.box_variant=int
python3 scripts/gpu_summary.py "$OUT"
