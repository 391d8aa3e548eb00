"""Static GPU cost of a Triton kernel from its SASS — no GPU needed (``llmquant bench kernels --sass``).

Triton compiles for any NVIDIA target without a device: ``triton.compile(ASTSource(fn, signature,
constexprs, attrs), target=GPUTarget("cuda", 90, 32))`` runs the whole pipeline down to a cubin (ptxas
ships inside the triton wheel), and the wheel's ``cuobjdump`` disassembles it (``-sass``) and reports its
resources (``-res-usage``: registers, stack).  :func:`static_cost` does this for one kernel config and
turns the SASS into per-weight numbers:

* **main loop** (heuristic): every backward branch ``BRA target`` with ``target <= address`` closes a
  loop region ``[target, branch]``; the *innermost* regions are those that contain no other such region,
  and the main loop is the innermost region with the most instructions (the K loop of a GEMM; Triton's
  software pipelining puts the loads of later stages in the same loop, and prologue/epilogue outside).
  A kernel without a backward branch (one tile per program: encode, Hadamard) is counted whole, from
  its first instruction to its last ``EXIT`` (cold subroutines placed after it, e.g. the slow path of an
  IEEE division, are left out).  A kernel whose loop holds a rarely taken slow path with loops of its own (the
  box activation encode) is counted on its **hot path** instead (:func:`find_hot_path`: the outer loop minus the
  forward branch that skips the slow path), with the slow path's size beside it.  Both sides of every branch
  inside the region are counted, so this is the cost of one iteration when no branch is skipped.  ``NOP`` s are
  not counted.
* ``instructions_per_weight = loop_instructions * threads / weights_per_iter`` with ``threads =
  num_warps * 32`` (every warp of the CTA runs the loop body; one SASS instruction = 32 thread-
  instructions) and ``weights_per_iter`` the weights one CTA consumes per iteration (``BLOCK_N * BLOCK_K``
  for the GEMMs; elements per program for encode / Hadamard).  This assumes ptxas did not unroll the
  loop (a runtime trip count and a body of thousands of instructions: it does not, for our kernels).
* ``registers`` and ``stack_bytes`` from ``cuobjdump -res-usage``; ``spills`` = number of local-memory
  instructions (``STL`` spill stores + ``LDL`` spill loads) in the whole kernel, ``loop_spills`` those in
  the main loop; ``shuffles`` = warp shuffles (``SHFL``) per weight, counted like the instructions.

Compiling needs the real ``@triton.jit`` function: if ``TRITON_INTERPRET=1`` was set when triton was
imported (the CPU test session), the kernels are interpreter objects, and :func:`static_cost` runs itself
in a fresh ``python -m llmquant.kernels.sass`` process with the variable removed (transparent to the
caller; constexprs must then be JSON values).

The cost model (rooflines, stated constants) is :mod:`.cost_model`; :func:`bench_rows` gives one row per
config of every kernel in this package (the ``--sass`` benchmark).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

#: a SASS line: ``/*0a40*/  @!P0 BRA 0x1990 ;``
_INSTR_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;")
_BRA_RE = re.compile(r"\bBRA(?:\.[A-Z0-9.]+)?\s+(0x[0-9a-f]+)")
_RES_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")

DEFAULT_ARCH = "sm_90"


@dataclass(frozen=True)
class Instr:
    address: int
    opcode: str  # base mnemonic, e.g. "FFMA" (modifiers and predicate stripped)
    text: str  # the instruction as printed (predicate included)


def parse_arch(arch: str | int) -> int:
    """``"sm_90"`` / ``"sm_90a"`` / ``"90"`` / ``90`` -> compute capability 90."""
    m = re.fullmatch(r"(?:sm_?)?(\d+)[a-z]?", str(arch).strip().lower())
    if not m:
        raise ValueError(f"--arch {arch!r}: expected something like sm_90 (Hopper) or sm_80 (Ampere)")
    return int(m.group(1))


def cuobjdump_path() -> str:
    """The ``cuobjdump`` shipped in the triton wheel (or ``TRITON_CUOBJDUMP_PATH``); raises if unavailable."""
    from triton import knobs

    tool = knobs.nvidia.cuobjdump
    if tool is None or not os.path.exists(tool.path):
        raise FileNotFoundError("cuobjdump not found: it ships in the triton wheel (triton/backends/nvidia/bin); "
                                "set TRITON_CUOBJDUMP_PATH to a CUDA toolkit's cuobjdump otherwise")
    return tool.path


def sass_tools_available() -> str | None:
    """None when triton and cuobjdump are usable here, else the reason (for skips and error messages)."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    try:
        cuobjdump_path()
    except Exception as exc:  # noqa: BLE001 - any failure here means "not available", with its reason
        return str(exc)
    return None


def _is_jit(fn) -> bool:
    from triton.runtime.jit import JITFunction

    return isinstance(fn, JITFunction)


def _kernel_ref(fn) -> str:
    """``module:name`` of a (JIT or interpreted) kernel, for the subprocess."""
    inner = getattr(fn, "fn", fn)
    return f"{inner.__module__}:{inner.__name__}"


def _resolve(ref: str):
    import importlib

    mod, _, name = ref.partition(":")
    return getattr(importlib.import_module(mod), name)


def compile_kernel(kernel_fn, signature: dict, constexprs: dict, *, arch: str | int = DEFAULT_ARCH,
                   num_warps: int = 4, num_stages: int = 3, divisible_by_16=(), enable_fp_fusion: bool | None = None):
    """``triton.compile`` of ``kernel_fn`` for ``arch`` without a GPU; returns the ``CompiledKernel``.

    ``signature``: Triton types of the runtime arguments (``"*fp16"``, ``"*i32"``, ``"*u8"``, ``"i32"``, ...);
    every argument in ``constexprs`` is added as ``"constexpr"``.  ``divisible_by_16``: argument names
    specialized as multiples of 16 (what the launcher does for 16-byte-aligned pointers and integer
    arguments divisible by 16); pointers are always treated as aligned.  ``enable_fp_fusion``: the launch option
    of that name (``None``: Triton's default); pass what the launcher passes (``False`` for the box encode, whose
    fp32 steps must not contract into FMAs), so the SASS counted is the SASS that runs.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(kernel_fn.arg_names)
    sig = {n: ("constexpr" if n in constexprs else signature.get(n)) for n in names}
    missing = [n for n, t in sig.items() if t is None]
    unknown = sorted(set(signature) - set(names)) + sorted(set(constexprs) - set(names))
    if missing or unknown:
        raise ValueError(f"{kernel_fn.__name__}: signature is missing {missing} / has unknown {unknown}; "
                         f"arguments are {names}")
    aligned = {n for n, t in sig.items() if t.startswith("*")} | set(divisible_by_16)
    # sorted: the dict's repr is part of Triton's cache key (a set's order changes with PYTHONHASHSEED)
    attrs = {(i,): [["tt.divisibility", 16]] for i in sorted(names.index(n) for n in aligned)}
    src = ASTSource(kernel_fn, sig, dict(constexprs), attrs)
    target = GPUTarget("cuda", parse_arch(arch), 32)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if enable_fp_fusion is not None:
        options["enable_fp_fusion"] = bool(enable_fp_fusion)
    return triton.compile(src, target=target, options=options)


def disassemble(cubin: bytes) -> tuple[str, str]:
    """``(sass, resource_usage)`` text of a cubin from ``cuobjdump -sass`` and ``-res-usage``."""
    tool = cuobjdump_path()
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        sass = subprocess.run([tool, "-sass", path], check=True, capture_output=True, text=True).stdout
        res = subprocess.run([tool, "-res-usage", path], check=True, capture_output=True, text=True).stdout
    finally:
        os.remove(path)
    return sass, res


def parse_sass(text: str) -> list[Instr]:
    """The instructions of a (single-function) ``cuobjdump -sass`` listing, in address order."""
    out = []
    for addr, body in _INSTR_RE.findall(text):
        body = body.strip()
        op = re.sub(r"^@!?U?P[T0-9]+\s+", "", body).split()[0].split(".")[0]
        out.append(Instr(int(addr, 16), op, body))
    return out


def parse_resources(text: str) -> dict:
    """``{"registers", "stack_bytes", "shared_bytes", "local_bytes"}`` from ``cuobjdump -res-usage``."""
    m = _RES_RE.search(text)
    if not m:
        raise ValueError(f"no 'REG:.. STACK:..' line in cuobjdump -res-usage output:\n{text}")
    reg, stack, shared, local = (int(v) for v in m.groups())
    return {"registers": reg, "stack_bytes": stack, "shared_bytes": shared, "local_bytes": local}


def find_main_loop(instrs: list[Instr]) -> tuple[int, int, str]:
    """``(first, last, kind)``: indices (inclusive) of the main-loop region, see the module docstring.

    ``kind`` is ``"loop"`` or ``"whole kernel"`` (no backward branch).
    """
    index = {ins.address: i for i, ins in enumerate(instrs)}
    loops = []
    for i, ins in enumerate(instrs):
        if ins.opcode != "BRA":
            continue
        m = _BRA_RE.search(ins.text)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target < ins.address and target in index:  # (target == address: the end-of-code self loop)
            loops.append((index[target], i))
    innermost = [(a, b) for a, b in loops
                 if not any((c, d) != (a, b) and a <= c and d <= b for c, d in loops)]
    if innermost:
        a, b = max(innermost, key=lambda r: sum(instrs[j].opcode != "NOP" for j in range(r[0], r[1] + 1)))
        return a, b, "loop"
    exits = [i for i, ins in enumerate(instrs) if ins.opcode == "EXIT"]
    return 0, (exits[-1] if exits else len(instrs) - 1), "whole kernel"


def find_hot_path(instrs: list[Instr]) -> tuple[int, int, int, int]:
    """``(first, last, cold_first, cold_last)``: the *outermost* loop region (the longest backward-branch region,
    indices inclusive) and its cold block (``cold_first > cold_last`` when there is none).

    For a kernel whose per-iteration fast path branches around a rarely taken slow path that holds the inner
    loops (the box activation encode: the structured search, and a runtime enumeration for a block with an
    undecided vector): the cold block is the largest forward branch inside the outer loop whose span covers every
    inner loop, i.e. the instructions strictly between the branch and its target.  The hot path is the loop minus
    that block; it is the cost of an iteration that does not take the slow path (the slow path's frequency is a
    property of the data, reported beside it, not counted here).
    """
    at = {ins.address: k for k, ins in enumerate(instrs)}
    branches = [(k, int(m.group(1), 16)) for k, ins in enumerate(instrs)
                if ins.opcode == "BRA" and (m := _BRA_RE.search(ins.text)) and int(m.group(1), 16) in at]
    loops = [(at[t], k) for k, t in branches if t < instrs[k].address]
    if not loops:
        raise ValueError("find_hot_path: the kernel has no loop")
    a, b = max(loops, key=lambda lp: lp[1] - lp[0])
    inner = [lp for lp in loops if lp != (a, b) and a <= lp[0] and lp[1] <= b]
    skips = [(k, at[t]) for k, t in branches if a <= k and at[t] <= b and t > instrs[k].address
             and all(k < lp[0] and lp[1] < at[t] for lp in inner)]
    if not (inner and skips):
        return a, b, 1, 0
    lo, hi = max(skips, key=lambda sk: sk[1] - sk[0])
    return a, b, lo + 1, hi - 1


def static_cost(kernel_fn, signature: dict, constexprs: dict, weights_per_iter: int, *,
                arch: str | int = DEFAULT_ARCH, num_warps: int = 4, num_stages: int = 3,
                divisible_by_16=(), keep_sass: bool = False, region: str = "main_loop",
                enable_fp_fusion: bool | None = None) -> dict:
    """Compile ``kernel_fn`` for ``arch`` (no GPU) and measure its main loop in SASS.

    ``region``: ``"main_loop"`` (:func:`find_main_loop`) or ``"hot_path"`` (:func:`find_hot_path`: the outer loop
    without its cold block; adds ``cold_instructions``); ``enable_fp_fusion``: as :func:`compile_kernel`.

    Returns a dict: ``arch``, ``num_warps``, ``threads``, ``region`` ("loop" / "whole kernel"),
    ``loop_instructions`` (warp-level SASS instructions in the region, NOPs excluded), ``weights_per_iter``,
    ``instructions_per_weight`` (= loop_instructions * threads / weights_per_iter, thread-instructions),
    ``shuffles`` (SHFL per weight, same scaling), ``loop_shuffles``, ``registers``, ``stack_bytes``,
    ``spills`` (STL + LDL instructions in the kernel), ``spill_stores``, ``spill_loads``, ``loop_spills``,
    ``top_opcodes`` (the 12 most frequent opcodes of the region), ``compile_seconds``
    (and ``sass`` with ``keep_sass``).

    ``signature`` maps every runtime argument to its Triton type, ``constexprs`` every ``tl.constexpr``
    argument to its value (see :func:`compile_kernel`); ``weights_per_iter`` is how many weights (or
    elements) one CTA consumes per iteration of the main loop (per program for a loop-free kernel).
    Works in any process: under ``TRITON_INTERPRET=1`` it re-runs itself in a subprocess without it.

    Example (a new W4A16 kernel with a ``[BLOCK_N, BLOCK_K]`` weight tile per K step)::

        from llmquant.kernels.sass import static_cost
        from mykernels import _my_decode_gemm_kernel

        row = static_cost(
            _my_decode_gemm_kernel,
            signature={"x_ptr": "*bf16", "codes_ptr": "*i32", "out_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32"},
            constexprs={"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128},
            weights_per_iter=64 * 128, num_warps=4, divisible_by_16=("N", "K"))
        row["instructions_per_weight"], row["registers"], row["spills"], row["shuffles"]

    and a prediction from it: ``llmquant.kernels.cost_model.predict_gemm(row["instructions_per_weight"],
    stored_bytes_per_weight=0.625, m=1, block_m=16)`` -> ``{"H100": ..., "H200": ...}``.
    """
    if not _is_jit(kernel_fn):
        return _static_cost_subprocess([{
            "kernel_ref": _kernel_ref(kernel_fn), "signature": signature, "constexprs": constexprs,
            "weights_per_iter": weights_per_iter, "arch": arch, "num_warps": num_warps, "num_stages": num_stages,
            "divisible_by_16": list(divisible_by_16), "keep_sass": keep_sass, "region": region,
            "enable_fp_fusion": enable_fp_fusion}])[0]
    if region not in ("main_loop", "hot_path"):
        raise ValueError(f"static_cost: region must be 'main_loop' or 'hot_path', got {region!r}")
    t0 = time.perf_counter()
    compiled = compile_kernel(kernel_fn, signature, constexprs, arch=arch, num_warps=num_warps,
                              num_stages=num_stages, divisible_by_16=divisible_by_16,
                              enable_fp_fusion=enable_fp_fusion)
    seconds = time.perf_counter() - t0
    sass, res = disassemble(compiled.asm["cubin"])
    instrs = parse_sass(sass)
    if not instrs:
        raise RuntimeError(f"{kernel_fn.__name__}: cuobjdump printed no SASS instructions")
    cold = []
    if region == "hot_path":
        a, b, c0, c1 = find_hot_path(instrs)
        kind = "hot path"
        cold = [ins for ins in instrs[c0:c1 + 1] if ins.opcode != "NOP"]
        region = [ins for k, ins in enumerate(instrs[a:b + 1], a) if ins.opcode != "NOP" and not c0 <= k <= c1]
    else:
        a, b, kind = find_main_loop(instrs)
        region = [ins for ins in instrs[a:b + 1] if ins.opcode != "NOP"]
    ops = collections.Counter(ins.opcode for ins in region)
    all_ops = collections.Counter(ins.opcode for ins in instrs)
    threads = num_warps * 32
    per_weight = threads / float(weights_per_iter)
    out = {
        "arch": f"sm_{parse_arch(arch)}", "num_warps": num_warps, "num_stages": num_stages, "threads": threads,
        "region": kind, "region_addresses": [hex(instrs[a].address), hex(instrs[b].address)],
        "loop_instructions": len(region), "weights_per_iter": int(weights_per_iter),
        "instructions_per_weight": round(len(region) * per_weight, 3),
        "shuffles": round(ops["SHFL"] * per_weight, 3), "loop_shuffles": ops["SHFL"],
        **parse_resources(res),
        "spills": all_ops["STL"] + all_ops["LDL"], "spill_stores": all_ops["STL"], "spill_loads": all_ops["LDL"],
        "loop_spills": ops["STL"] + ops["LDL"],
        "top_opcodes": dict(ops.most_common(12)), "compile_seconds": round(seconds, 2),
    }
    if kind == "hot path":
        out["cold_instructions"] = len(cold)
    if keep_sass:
        out["sass"] = sass
    return out


def _clean_env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return env


def _static_cost_subprocess(jobs: list[dict]) -> list[dict]:
    """Run :func:`static_cost` jobs (``kernel_ref`` = ``module:name``) in a fresh interpreter-free process."""
    proc = subprocess.run([sys.executable, "-m", "llmquant.kernels.sass", "--jobs", "-"], input=json.dumps(jobs),
                          capture_output=True, text=True, env=_clean_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"static_cost subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# The kernels of this package: one spec per config, and the rows of `llmquant bench kernels --sass`.

#: Reference K for the per-row fp32 scale in the stored bytes (codes 0.5 B + uint8 β index per 8 weights
#: 0.125 B + 4 B row scale / K).
REFERENCE_K = 4096
W4_STORED_BYTES = 0.5 + 1.0 / 8 + 4.0 / REFERENCE_K
#: M at which each GEMM is predicted: decode GEMV (M=1) and prefill / W4A4 (M=2048).
M_SMALL, M_LARGE = 1, 2048


def kernel_specs() -> list[dict]:
    """Every Triton kernel config of this package with the launch's signature and constexprs.

    Configs are the GPU defaults of the launchers (``choose_config`` of the W4A16 GEMM for small / medium /
    large M, the box-code W4A16 GEMV's ``GPU_CONFIG`` with fp16 and bf16 x and its small-M kernel's M_BLOCK = 8 tile
    (lattice, level table and a level table per β, fp16 x), its prefill dequant (64 x 16 words, bf16 out),
    ``e8_w4a4_gemm``'s CUDA tile in both modes,
    the box-code W4A4 GEMM's decode / prefill tiles for 2x2 and 1x2 int8 limbs and its activation int8 conversion
    (``kernels/box_w4a4.py``), the box activation encode (``kernels/box_encode.py``: D8 ``d8int8`` by the
    reference rule on its hot path and by the nearest rule, with and without the W4A4 limb; Hamming ``int`` with 2
    limbs), the box KV cache decode
    (``kernels/box_kv_decode.py``, head_dim 128), ``e8_encode``'s ``block_r``, the Hadamard tile
    sizes of n = 4096 and 14336), with BF16 activations for the GEMMs (the comparison is against BF16).
    A spec may carry ``region`` / ``enable_fp_fusion`` for :func:`static_cost` (the launch's own options).
    """
    w4a16 = "llmquant.kernels.e8_decode_gemm:_e8_decode_gemm_kernel"
    w4a16_sig = {"x_ptr": "*bf16", "codes_ptr": "*i32", "bidx_ptr": "*u8", "betas_ptr": "*fp32",
                 "scale_ptr": "*fp32", "bias_ptr": "*fp32", "g2_ptr": "*fp32", "out_ptr": "*bf16",
                 "part_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "q": "i32", "stride_xm": "i32",
                 "stride_om": "i32", "K_PER_SPLIT": "i32"}
    w4a16_div = ("N", "K", "stride_xm", "stride_om", "K_PER_SPLIT")
    specs = []
    for label, bm, bn, bk, split, warps, m in (("small-M (decode, M<=16)", 16, 64, 128, 4, 4, M_SMALL),
                                               ("medium-M (M<=128)", 64, 128, 64, 1, 4, 128),
                                               ("large-M (prefill)", 128, 128, 64, 1, 8, M_LARGE)):
        sig = dict(w4a16_sig, part_ptr="*fp32" if split > 1 else "*bf16")
        specs.append({
            "kernel": "w4a16", "label": label, "kernel_ref": w4a16, "signature": sig,
            "constexprs": {"HAS_BIAS": False, "SPLIT_K": split, "IEEE": False,
                           "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
            "num_warps": warps, "weights_per_iter": bn * bk, "divisible_by_16": w4a16_div,
            "model": {"type": "gemm", "m": m, "block_m": bm, "stored_bytes_per_weight": W4_STORED_BYTES,
                      "tensor_flops_per_mac": 2.0, "int8": False},
        })
    # the box-code (b=3) W4A16 decode GEMV (kernels/box_w4a16.py): one int32 word per 8 weights + fp16 row scale
    # ("table": the level-table path, TABLE=True, of the shipped box_variant 'table' configs; "beta_tables": the same
    # path reading a level table per β, PER_BETA=True, box_variant 'beta_tables')
    box_sig = {"x_ptr": "*i32", "w_ptr": "*i32", "scale_ptr": "*fp16", "betas_ptr": "*fp32", "levels_ptr": "*fp32",
               "htab_ptr": "*i32", "bias_ptr": "*fp32", "out_ptr": "*fp16", "part_ptr": "*fp32", "cnt_ptr": "*i32",
               "M": "i32", "N": "i32", "KW": "i32", "stride_xm": "i32", "stride_om": "i32", "KW_PER_SPLIT": "i32"}
    for table, per_beta, xname, x_mode in ((False, False, "fp16", 0), (False, False, "bf16", 1),
                                           (True, False, "fp16", 0), (True, False, "bf16", 1),
                                           (True, True, "fp16", 0), (True, True, "bf16", 1)):
        variant = " beta_tables" if per_beta else " table" if table else ""
        specs.append({
            "kernel": "w4a16", "label": f"box b=3{variant}, decode GEMV (M=1), {xname} x",
            "kernel_ref": "llmquant.kernels.box_w4a16:_box_w4a16_kernel",
            "signature": dict(box_sig, out_ptr=f"*{xname}"),
            "constexprs": {"HAS_BIAS": False, "SPLIT_K": 4, "USE_ASM": True, "X_MODE": x_mode, "EVEN_N": True,
                           "EVEN_G": True, "BLOCK_N": 1024, "BLOCK_G": 4, "TABLE": table,
                           "FUSED_REDUCE": False, "PER_BETA": per_beta},
            "num_warps": 4, "weights_per_iter": 1024 * 4 * 8,
            "divisible_by_16": ("N", "KW", "stride_xm", "stride_om", "KW_PER_SPLIT"),
            "model": {"type": "gemm", "m": M_SMALL, "block_m": 1, "stored_bytes_per_weight": 0.5 + 2.0 / REFERENCE_K,
                      "tensor_flops_per_mac": 0.0, "int8": False},
        })
    # its small-M kernel (kernels/box_w4a16_rows.py, the default for 1 < M <= 16): one decode per word for M_BLOCK
    # rows; predicted at M = 16 (cdiv(16, M_BLOCK) row blocks, each decoding the weight once)
    from .box_w4a16 import ROWS_CONFIGS

    rc = ROWS_CONFIGS[8]
    for table, per_beta in ((False, False), (True, False), (True, True)):
        variant = " beta_tables" if per_beta else " table" if table else ""
        specs.append({
            "kernel": "w4a16", "label": f"box b=3{variant}, small-M GEMV (M=16, M_BLOCK="
                                        f"{rc['M_BLOCK']}), fp16 x",
            "kernel_ref": "llmquant.kernels.box_w4a16_rows:_box_w4a16_rows_kernel",
            "signature": box_sig,
            "constexprs": {"HAS_BIAS": False, "SPLIT_K": 4, "USE_ASM": True, "X_MODE": 0, "EVEN_N": True,
                           "EVEN_G": True, "BLOCK_N": rc["BLOCK_N"], "BLOCK_G": rc["BLOCK_G"], "TABLE": table,
                           "M_BLOCK": rc["M_BLOCK"], "FUSED_REDUCE": False, "PER_BETA": per_beta},
            "num_warps": rc["num_warps"], "weights_per_iter": rc["BLOCK_N"] * rc["BLOCK_G"] * 8,
            "divisible_by_16": ("N", "KW", "stride_xm", "stride_om", "KW_PER_SPLIT"),
            "model": {"type": "gemm", "m": 16, "block_m": rc["M_BLOCK"],
                      "stored_bytes_per_weight": 0.5 + 2.0 / REFERENCE_K, "tensor_flops_per_mac": 0.0, "int8": False},
        })
    # its prefill path (CUDA, M > DEQUANT_MIN_M): the dequant kernel (64 x 16 words per program, bf16 out, as
    # box_dequant launches it) decodes the weight once per call, then a BF16 GEMM; predicted at M = 2048
    deq_sig = {"w_ptr": "*i32", "scale_ptr": "*fp16", "betas_ptr": "*fp32", "levels_ptr": "*fp32",
               "htab_ptr": "*i32", "out_ptr": "*bf16", "N": "i32", "KW": "i32"}
    for table, per_beta in ((False, False), (True, False), (True, True)):
        variant = " beta_tables" if per_beta else " table" if table else ""
        specs.append({
            "kernel": "w4a16", "label": f"box b=3{variant}, prefill dequant (M=2048: decode once to bf16, then a "
                                        "BF16 GEMM)",
            "kernel_ref": "llmquant.kernels.box_w4a16:_box_dequant_kernel", "signature": deq_sig,
            "constexprs": {"BLOCK_N": 64, "BLOCK_G": 16, "TABLE": table, "PER_BETA": per_beta},
            "num_warps": 4, "weights_per_iter": 64 * 16 * 8, "divisible_by_16": ("N", "KW"),
            # reads the word and row scale, writes 2 B of bf16 per weight
            "model": {"type": "dequant_gemm", "m": M_LARGE, "bytes_per_weight": 0.5 + 2.0 / REFERENCE_K + 2.0},
        })
    w4a4_sig = {"xc_ptr": "*i32", "xb_ptr": "*u8", "xs_ptr": "*fp32", "xbetas_ptr": "*fp32", "wc_ptr": "*i32",
                "wb_ptr": "*u8", "ws_ptr": "*fp32", "wbetas_ptr": "*fp32", "bias_ptr": "*fp32", "gx2_ptr": "*fp32",
                "out_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "qx": "i32", "qw": "i32", "stride_om": "i32"}
    for label, int8, kx, kw in (("fp16 mode, 4x4 betas", False, 4, 4), ("int8 mode, 2x2 betas", True, 2, 2)):
        specs.append({
            "kernel": "w4a4", "label": label, "kernel_ref": "llmquant.kernels.e8_w4a4_gemm:_w4a4_kernel",
            "signature": w4a4_sig,
            "constexprs": {"HAS_BIAS": False, "INT8": int8, "KX": kx, "KW": kw,
                           "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64},
            "num_warps": 4, "weights_per_iter": 128 * 64, "divisible_by_16": ("M", "N", "K", "stride_om"),
            "model": {"type": "gemm", "m": M_LARGE, "block_m": 128, "stored_bytes_per_weight": W4_STORED_BYTES,
                      "tensor_flops_per_mac": 2.0 * kx * kw if int8 else 2.0, "int8": int8},
        })
    # the box-code W4A4 GEMM (kernels/box_w4a4.py): b=3 weights (one int32 per 8 weights + fp16 row scale), int8
    # activation limbs; int8 limbs of the shipped integer-ratio sets: b=3 'int' 2 limbs, b=2 'int8' 1 limb, and a
    # D8 (parity) b=3 code with 2 integer β <= 8: 1 limb.  Decode tiles decode the words in the loop; prefill tiles
    # read int8 weight planes decoded once per call by _box_int8_kernel (its cost: the "once" of the prediction).
    from .box_w4a4 import CONFIGS as BOX_W4A4_CONFIGS

    box4_sig = {"xq_ptr": "*i8", "xs_ptr": "*fp32", "w_ptr": "*i32", "ws_ptr": "*fp16", "rtab_ptr": "*i32",
                "bias_ptr": "*fp32", "out_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "x_plane": "i32",
                "w_plane": "i32", "alpha": "fp32", "stride_om": "i32"}
    for what, lx, lw, code_w in (("b=3 int weights x b=3 int acts", 2, 2, 0),
                                 ("b=3 int weights x b=2 int8 acts", 1, 2, 0),
                                 ("b=3 D8 2-int-β weights x same acts", 1, 1, 1)):
        for tile, m in (("decode", M_SMALL), ("prefill" if lw == 1 else "prefill_limbs", M_LARGE)):
            cfg = BOX_W4A4_CONFIGS[tile]
            planes = bool(cfg.get("W_PLANES", False))
            specs.append({
                "kernel": "w4a4", "label": f"box-W4A4: {what} ({lx}x{lw} int8 limbs), {tile} (M={m})",
                "kernel_ref": "llmquant.kernels.box_w4a4:_box_w4a4_kernel",
                "signature": dict(box4_sig, w_ptr="*i8" if planes else "*i32"),
                "constexprs": {"HAS_BIAS": False, "RAW": False, "BW": 3, "LX": lx, "LW": lw, "CODE_W": code_w,
                               "W_PLANES": planes, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
                               "BLOCK_K": cfg["BLOCK_K"]},
                "num_warps": cfg["num_warps"], "weights_per_iter": cfg["BLOCK_N"] * cfg["BLOCK_K"],
                "divisible_by_16": ("M", "N", "K", "x_plane", "w_plane", "stride_om"),
                "model": {"type": "gemm", "m": m, "block_m": cfg["BLOCK_M"],
                          "stored_bytes_per_weight": 0.5 + 2.0 / REFERENCE_K + (2.0 * lw if planes else 0.0),
                          "tensor_flops_per_mac": 2.0 * lx * lw, "int8": True,
                          **({"once_from": f"box-int8-{lw}"} if planes else {}),
                          **({"with_encode_from": {"nearest": "box-encode-d8int8-nearest-limbs",
                                                   "reference": "box-encode-d8int8-reference-limbs"}}
                             if code_w and m == M_LARGE else {})},
            })
    for lw in (2, 1):
        specs.append({
            "id": f"box-int8-{lw}", "kernel": "encode",
            "label": f"box words -> int8 limbs (b=3, {lw} limb{'s' if lw > 1 else ''}; activations once per row, "
                     "prefill weights once per call)",
            "kernel_ref": "llmquant.kernels.box_w4a4:_box_int8_kernel",
            "signature": {"w_ptr": "*i32", "rtab_ptr": "*i32", "out_ptr": "*i8", "R": "i32", "G": "i32",
                          "plane": "i32"},
            "constexprs": {"B": 3, "LIMBS": lw, "BLOCK_R": 32, "BLOCK_G": 16, "CODE": 0 if lw == 2 else 1},
            "num_warps": 4, "weights_per_iter": 32 * 16 * 8, "divisible_by_16": ("R", "G", "plane"),
            "model": {"type": "elementwise", "bytes_per_element": 0.5 + lw, "tensor_flops_per_element": 0.0},
        })
    # the box activation encode (kernels/box_encode.py) as the W4A4 dispatch launches it on a GPU for prefill rows
    # (launch_config: 4 warps, 128 8-vectors per block, one per thread; scales given by dispatch; fp contraction
    # off): the D8 'd8int8' code's structured search (STRUCT) counted on its hot path (the vector-block loop without
    # the runtime enumeration that a block with an undecided vector takes), words only and with the W4A4 int8
    # limbs written in the same pass (what dispatch runs); the Hamming 'int' code's unrolled 16 x 16 candidates
    import torch

    from .box_encode import launch_config as encode_launch

    ecfg = encode_launch(M_LARGE, REFERENCE_K // 8, torch.device("cuda"))
    enc_sig = {"x_ptr": "*bf16", "betas_ptr": "*fp32", "words_ptr": "*i32", "scales_ptr": "*fp32", "M": "i32",
               "K": "i32", "NV": "i32", "stride_xm": "i32", "n_betas": "i32", "n_cw": "i32"}
    for code, limbs, rule in (("d8int8", 0, "reference"), ("d8int8", 1, "reference"), ("d8int8", 0, "nearest"),
                              ("d8int8", 1, "nearest"), ("int", 2, "reference")):
        parity = code == "d8int8"
        nearest = rule == "nearest"
        what = ("D8, 2 β, nearest rule: best even word per β (the W4A4 dispatch's default)" if nearest
                else "D8, 2 β, reference rule: structured search, bit-identical words, hot path" if parity
                else "Hamming, 16 β x 16 codewords unrolled")
        specs.append({
            "id": f"box-encode-{code}-{rule}" + ("-limbs" if limbs else ""), "kernel": "encode",
            "label": (f"box activation encode, b=3 {code} ({what}), bf16 x, given scales"
                      + (f", + {limbs} int8 limb plane(s) for the W4A4 GEMM" if limbs else "")),
            "kernel_ref": "llmquant.kernels.box_encode:" + ("_box_encode_int8_kernel" if limbs
                                                             else "_box_encode_kernel"),
            "signature": dict(enc_sig, **({"xq_ptr": "*i32", "rtab_ptr": "*i32"} if limbs else {})),
            "constexprs": {"B": 3, "PARITY": parity, "NB": 2 if parity else 16, "NC": 128 if parity else 16,
                           "MEAN_MUL": True, "HAS_SCALE": True, "SPLIT": ecfg["SPLIT"],
                           "STRUCT": 2 if nearest else int(parity),
                           "BLOCK_R": ecfg["BLOCK_R"], "BLOCK_V": ecfg["BLOCK_V"], "BLOCK_K": ecfg["BLOCK_K"],
                           **({"LIMBS": limbs} if limbs else {})},
            "num_warps": ecfg["num_warps"], "weights_per_iter": ecfg["BLOCK_V"] * 8,
            "divisible_by_16": ("K", "NV", "stride_xm", "n_cw"),
            "region": "hot_path" if parity and not nearest else "main_loop", "enable_fp_fusion": False,
            # reads 2 B (bf16), writes the 0.5 B word and 1 B per limb
            "model": {"type": "elementwise", "bytes_per_element": 2.5 + limbs, "tensor_flops_per_element": 0.0},
        })
    # the packed box KV cache's decode on a GPU (kernels/box_kv_decode.py; issue 10): head_dim 128 (16 words per row)
    # at the launcher's CUDA tile, b=3 lattice codes (int, d8int8) into fp16 and the level-table code into fp32
    from .box_kv_decode import launch_config as kv_launch

    kcfg = kv_launch(4096, 16, torch.device("cuda"))
    kv_sig = {"words_ptr": "*i32", "scales_ptr": "*fp16", "tab_ptr": "*fp32", "T": "i32", "NV": "i32",
              "stride_wo": "i32", "stride_wt": "i32", "stride_wv": "i32", "stride_so": "i32", "stride_st": "i32"}
    for lattice, out, nbytes in ((True, "fp16", 2), (False, "fp32", 4)):
        specs.append({
            "kernel": "kv_decode", "label": f"box KV cache decode, b=3 {'lattice' if lattice else 'level table'}, "
                                            f"head_dim 128, {out} out",
            "kernel_ref": "llmquant.kernels.box_kv_decode:_box_kv_decode_kernel",
            "signature": dict(kv_sig, out_ptr=f"*{out}"),
            "constexprs": {"B": 3, "M_BITS": 4, "PARITY": False, "LATTICE": lattice, "BF16_BITS": False,
                           "BLOCK_R": kcfg["BLOCK_R"], "BLOCK_V": kcfg["BLOCK_V"]},
            "num_warps": kcfg["num_warps"], "weights_per_iter": kcfg["BLOCK_R"] * kcfg["BLOCK_V"] * 8,
            "divisible_by_16": ("NV", "stride_wo", "stride_wt"), "enable_fp_fusion": False,
            # reads the 0.5 B word share and the row's fp16 scale, writes the value
            "model": {"type": "elementwise", "bytes_per_element": 0.5 + 2.0 / 128 + nbytes,
                      "tensor_flops_per_element": 0.0},
        })
    specs.append({
        "kernel": "encode", "label": "min_error, 4 betas, bf16 input",
        "kernel_ref": "llmquant.kernels.e8_encode:_e8_encode_kernel",
        "signature": {"x_ptr": "*bf16", "scale_ptr": "*fp32", "betas_ptr": "*fp32", "ginvh_ptr": "*fp32",
                      "codes_ptr": "*i32", "bidx_ptr": "*u8", "R": "i32", "G_COLS": "i32", "q": "i32"},
        "constexprs": {"K_BETAS": 4, "MIN_ERROR": True, "BLOCK_R": 64},
        "num_warps": 4, "weights_per_iter": 64 * 8, "divisible_by_16": ("R", "G_COLS"),
        "model": {"type": "elementwise", "bytes_per_element": 2.0 + W4_STORED_BYTES - 4.0 / REFERENCE_K,
                  "tensor_flops_per_element": 0.0},
    })
    for n, p in ((4096, 64), (14336, 128)):  # hadamard_factors: 64 x 64, and 112 x 128 padded to 128 x 128
        specs.append({
            "kernel": "hadamard", "label": f"n={n}, bf16, signs",
            "kernel_ref": "llmquant.kernels.hadamard:_hadamard_kernel",
            "signature": {"x_ptr": "*bf16", "s_ptr": "*fp32", "a_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": "*bf16",
                          "stride_x": "i32", "stride_y": "i32", "n1": "i32", "n2": "i32", "norm": "fp32"},
            "constexprs": {"HAS_SIGNS": True, "TRANSPOSE": False, "IEEE": False, "P1": p, "P2": p},
            "num_warps": 4, "weights_per_iter": n, "divisible_by_16": ("stride_x", "stride_y", "n2"),
            "model": {"type": "elementwise", "bytes_per_element": 4.0,
                      "tensor_flops_per_element": 2.0 * p * p * 2 * p / n},
        })
    return specs


def _predict(model: dict, row: dict, once: float = 0.0) -> dict:
    from .cost_model import predict_dequant_gemm, predict_elementwise, predict_gemm

    ipw = row["instructions_per_weight"]
    if model["type"] == "dequant_gemm":
        return predict_dequant_gemm(ipw, model["bytes_per_weight"], m=model["m"])
    if model["type"] == "gemm":
        return predict_gemm(ipw, model["stored_bytes_per_weight"], m=model["m"], block_m=model["block_m"],
                            tensor_flops_per_mac=model["tensor_flops_per_mac"], int8=model["int8"],
                            once_instr_per_weight=once)
    return predict_elementwise(ipw, model["bytes_per_element"],
                               tensor_flops_per_element=model["tensor_flops_per_element"])


def _with_encode(model: dict, row: dict, once: float, enc_spec: dict, enc_row: dict) -> dict:
    """The W4A4 prefill prediction with its activation encode (:func:`.cost_model.predict_w4a4_with_encode` on the
    linears of one Llama-3-8B layer, :data:`.cost_model.LLAMA3_8B_LAYER`, at the row's ``m``)."""
    from .cost_model import LLAMA3_8B_LAYER, predict_w4a4_with_encode

    gemm = {"instr_per_weight": row["instructions_per_weight"],
            "stored_bytes_per_weight": model["stored_bytes_per_weight"], "block_m": model["block_m"],
            "tensor_flops_per_mac": model["tensor_flops_per_mac"], "int8": model["int8"],
            "once_instr_per_weight": once}
    enc = [{"instr_per_element": enc_row["instructions_per_weight"],
            "bytes_per_element": enc_spec["model"]["bytes_per_element"]}]
    return predict_w4a4_with_encode(gemm, enc, m=model["m"], **LLAMA3_8B_LAYER)


def _job(spec: dict, arch) -> dict:
    return {"kernel_ref": spec["kernel_ref"], "signature": spec["signature"], "constexprs": spec["constexprs"],
            "weights_per_iter": spec["weights_per_iter"], "arch": arch, "num_warps": spec["num_warps"],
            "num_stages": 3, "divisible_by_16": list(spec["divisible_by_16"]), "keep_sass": False,
            "region": spec.get("region", "main_loop"), "enable_fp_fusion": spec.get("enable_fp_fusion")}


def _run_jobs(jobs: list[dict]) -> list[dict]:
    """Jobs in this process when the kernels are real JIT functions, else in one clean subprocess."""
    from .availability import interpreter_active, interpreter_enabled

    if interpreter_enabled() or interpreter_active():
        return _static_cost_subprocess(jobs)
    out = []
    for job in jobs:
        job = dict(job)
        fn = _resolve(job.pop("kernel_ref"))
        wpi = job.pop("weights_per_iter")
        out.append(static_cost(fn, job.pop("signature"), job.pop("constexprs"), wpi, **job))
    return out


def bench_rows(arch: str | int = DEFAULT_ARCH) -> list[dict]:
    """One row per config of :func:`kernel_specs`: the SASS numbers plus ``predicted_speedup_vs_bf16``.

    Row keys: ``kernel``, ``config`` (label, constexprs, num_warps), ``arch``, ``instructions_per_weight``,
    ``registers``, ``spills``, ``shuffles``, ``predicted_speedup_vs_bf16`` ``{"H100", "H200"}``, and the
    details (``loop_instructions``, ``threads``, ``weights_per_iter``, ``region``, ``stack_bytes``,
    ``top_opcodes``, ``model``, ...).  GEMMs are predicted at the ``m`` in ``model`` against a BF16 GEMM
    of the same shape; encode / Hadamard against one memory-bound BF16 pass over the same elements.  The D8 box
    W4A4 prefill row also carries ``predicted_speedup_vs_bf16_with_encode``: the GEMM plus the activation encode that
    feeds it (the dispatch's rule, :data:`.box_encode.DEFAULT_DISPATCH_RULE`: row ``box-encode-d8int8-nearest-limbs``)
    on one Llama-3-8B layer's linears, not overlapped; and ``..._with_reference_encode`` (the bit-identical rule's
    row, hot path).
    """
    from .box_encode import DEFAULT_DISPATCH_RULE as DISPATCH_ENCODE_RULE

    specs = kernel_specs()
    results = _run_jobs([_job(s, arch) for s in specs])
    by_id = {s["id"]: r for s, r in zip(specs, results) if "id" in s}
    spec_by_id = {s["id"]: s for s in specs if "id" in s}
    rows = []
    for spec, res in zip(specs, results):
        once_from = spec["model"].get("once_from")
        once = by_id[once_from]["instructions_per_weight"] if once_from else 0.0
        row = {"kernel": spec["kernel"],
               "config": {"label": spec["label"], **spec["constexprs"], "num_warps": spec["num_warps"]},
               "arch": res["arch"], "instructions_per_weight": res["instructions_per_weight"],
               "registers": res["registers"], "spills": res["spills"], "shuffles": res["shuffles"],
               "predicted_speedup_vs_bf16": _predict(spec["model"], res, once)}
        enc = spec["model"].get("with_encode_from")
        if enc:
            # with the encode the dispatch runs (its default rule), and with the bit-identical reference rule
            for rule, key in ((DISPATCH_ENCODE_RULE, "predicted_speedup_vs_bf16_with_encode"),
                              ("reference", "predicted_speedup_vs_bf16_with_reference_encode")):
                row[key] = _with_encode(spec["model"], res, once, spec_by_id[enc[rule]], by_id[enc[rule]])
        row.update({k: v for k, v in res.items() if k not in row})
        row["model"] = spec["model"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmquant.kernels.sass",
                                description="static SASS cost of the Triton kernels (no GPU needed)")
    p.add_argument("--arch", default=DEFAULT_ARCH)
    p.add_argument("--jobs", default=None, help="'-': read a JSON list of static_cost jobs on stdin (internal)")
    args = p.parse_args(argv)
    if args.jobs is not None:
        if args.jobs == "-":
            jobs = json.load(sys.stdin)
        else:
            with open(args.jobs) as f:
                jobs = json.load(f)
        out = _run_jobs(jobs)
    else:
        out = bench_rows(args.arch)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
