#!/bin/bash
# One prepared GPU session (the `device` tool: one H200, ~10 minutes of command time):
#   1. `llmquant bench kernels --json`: box W4A16 (lattice + table paths) and box W4A4 kernels vs torch BF16/FP16
#      (CUDA-graph replay timing: GPU time, no host overhead) at M = 1, 16 on the Llama-3.2-1B and Llama-3-8B
#      shapes, then M = 2048;
#   2. `llmquant bench decode --cuda-graph`: end-to-end greedy decode of a random-weight Llama-3.2-1B-shaped model,
#      FP16 vs E8 box W4A16 (`int` = the kernel's lattice path; shipped `table` = its level-table path), eager and
#      with the one-token step captured in a CUDA graph (StaticCache);
#   3. kernel correctness against the PyTorch reference on the GPU (box encode, KV decode, W4A16 paths, W4A4) first,
#      and the tile/split sweep of the GEMV (FUSED_REDUCE on/off).
# Usage: OUT=/some/dir [BUDGET=540] bash scripts/gpu_bench.sh   (each step has its own time limit, all within BUDGET
# seconds; stdout -> NAME.log, stderr -> NAME.err in $OUT; the kernel benchmark writes one JSON row per line to
# stderr as it goes)
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
cd "$(dirname "$0")/.."
{ date -u; nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv;
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1 || { echo "install failed"; tail -5 "$OUT/install.log"; }
python3 -c "import llmquant.cli, llmquant.kernels.box_w4a16, eval.decode_speed" || exit 1
# Whole-run budget: a device command is cut at 600 s, so every step gets at most what is left of BUDGET (default 540 s
# from the start of this script) and is skipped when under 20 s remain.  Steps run in priority order: what has never
# run on a GPU first (correctness of the new kernels, then their timings), the end-to-end decodes last.
BUDGET=${BUDGET:-540}
step() {  # step NAME SECONDS CMD...: run with a timeout, stdout to $OUT/NAME.log, stderr to $OUT/NAME.err
  local name=$1 secs=$2; shift 2; local t0=$SECONDS left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then echo "== $name skipped (budget)"; return; fi
  [ "$secs" -gt "$left" ] && secs=$left
  timeout "$secs" "$@" > "$OUT/$name.log" 2> "$OUT/$name.err"; local rc=$?
  echo "== $name rc=$rc $((SECONDS - t0))s"
}
DEC="python3 -m llmquant.cli bench decode --shape llama-3.2-1b --json --cuda-graph --config configs/smollm2-135m-e8-w4a16.yaml --set weights.algorithm=rtn"
# 1. the kernels that never ran on a GPU, against their references (bit-identity of the encode, KV decode, per-β
#    table path; the encode's words assume cuBLAS sums in the CPU matmul's order): real kernels, no interpreter
step pytest_kernels ${T_P:-150} python3 -m pytest -q -p no:cacheprovider --maxfail=25 tests/test_box_encode_d8.py \
  tests/test_kernels_box_encode.py tests/test_kernels_box_kv.py tests/test_box_w4a4.py \
  tests/test_kernels_box.py
tail -3 "$OUT/pytest_kernels.log"
# 2. W4A4 prefill at M = 2048 with the Triton encode (encode_us beside gemm_us: the 1.44x prediction) and the
#    W4A16 dequant path
step kernels_m2048 ${T_K2:-90} python3 -m llmquant.cli bench kernels --json --shapes llama3-8b --m 2048 --kernels box-w4a16 box-w4a4
# 3. tile/split sweep of the M=1 GEMV, with and without the in-kernel split-K reduction (FUSED_REDUCE)
step sweep_1b ${T_S:-90} python3 scripts/gpu_gemv_sweep.py --shapes llama-3.2-1b
# 4. M = 1, 16 (lattice, table and per-β table paths; W4A4 decode tiles), without the Voronoi reference kernel (its
#    autotuned compile alone outlasted a 120 s limit)
step kernels_8b ${T_K1:-70} python3 -m llmquant.cli bench kernels --json --shapes llama3-8b --m 1 16 --kernels box-w4a16 box-w4a4
step kernels_1b ${T_K1:-70} python3 -m llmquant.cli bench kernels --json --shapes llama-3.2-1b --m 1 16 --kernels box-w4a16 box-w4a4
# 5. end to end (eager and CUDA graph)
step decode_int ${T_D1:-140} $DEC --set weights.box_variant=int
step decode_table ${T_D2:-140} $DEC
python3 scripts/gpu_summary.py "$OUT"
