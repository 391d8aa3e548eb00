"""Roofline cost model for the static kernel benchmark (``llmquant bench kernels --sass``): no GPU needed.

A kernel is summarized by *per-weight* costs (see :func:`llmquant.kernels.sass.static_cost`): thread-
instructions per weight (from SASS), stored bytes per weight, tensor-core operations per weight.  The
predicted time per weight is the slowest of three rooflines::

    t_ours = max(bytes / HBM_BW,  instructions / INSTR_RATE,  tensor_ops / TENSOR_RATE)
    t_bf16 = max(2 B / HBM_BW,  2 M / BF16_FLOPS)           (a BF16 GEMM with the same weight: 2 B/weight,
                                                            2 flops per weight per activation row)
    predicted_speedup_vs_bf16 = t_bf16 / t_ours

At ``M = 1`` the BF16 GEMV is memory-bound (2 B/weight); at large ``M`` (``M = 2048``) it is compute-bound
on the BF16 tensor cores.  Every constant is stated below (dense, no sparsity; SXM parts).

This is a *prediction* from static analysis: it assumes full occupancy, perfect overlap of memory and
compute, every instruction of the counted region issued once per iteration (both sides of a branch
are counted), and it ignores activation/output traffic, L2 hits, launch overhead and the split-K
reduction.  It is meant to rank kernel designs, not to replace a timing on a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GPU:
    """Roofline constants of one GPU (per second, whole chip)."""

    name: str
    hbm_bytes_per_s: float  # HBM bandwidth
    thread_instr_per_s: float  # SMs x 4 schedulers x 1 warp-instruction/clock x 32 threads x clock
    bf16_flops: float  # dense BF16 (= FP16) tensor-core FLOP/s
    int8_ops: float  # dense INT8 tensor-core OP/s

    def as_dict(self) -> dict:
        return asdict(self)


#: H100 SXM: 132 SMs x 4 x 32 x 1.755 GHz ≈ 2.97e13 thread-instructions/s, HBM3 3.35 TB/s,
#: dense BF16 989 TFLOP/s, dense INT8 1979 TOPS.
H100 = GPU("H100", hbm_bytes_per_s=3.35e12, thread_instr_per_s=3.0e13, bf16_flops=989e12, int8_ops=1979e12)
#: H200 SXM: the H100's compute (same SMs and clocks) with HBM3e at 4.8 TB/s.
H200 = GPU("H200", hbm_bytes_per_s=4.8e12, thread_instr_per_s=3.0e13, bf16_flops=989e12, int8_ops=1979e12)
GPUS = (H100, H200)

#: Bytes per weight of a BF16 weight matrix.
BF16_BYTES = 2.0


def time_per_weight(gpu: GPU, *, instructions: float, bytes_: float, tensor_flops: float = 0.0,
                    tensor_int8_ops: float = 0.0) -> float:
    """Seconds per weight: the slowest of the memory, instruction-issue and tensor-core rooflines."""
    return max(bytes_ / gpu.hbm_bytes_per_s, instructions / gpu.thread_instr_per_s,
               tensor_flops / gpu.bf16_flops + tensor_int8_ops / gpu.int8_ops)


def bf16_gemm_time_per_weight(gpu: GPU, m: int) -> float:
    """Seconds per weight of a BF16 ``[M, K] x [K, N]`` GEMM: memory-bound at small M, compute-bound at large M."""
    return max(BF16_BYTES / gpu.hbm_bytes_per_s, 2.0 * m / gpu.bf16_flops)


def bf16_elementwise_time(gpu: GPU) -> float:
    """Seconds per element of one memory-bound BF16 pass (read 2 B + write 2 B): the baseline for the
    encode and Hadamard kernels, which are not GEMMs (speedup < 1 = slower than such a pass)."""
    return 2 * BF16_BYTES / gpu.hbm_bytes_per_s


def predict_gemm(instr_per_weight: float, stored_bytes_per_weight: float, *, m: int, block_m: int,
                 tensor_flops_per_mac: float = 2.0, int8: bool = False, once_instr_per_weight: float = 0.0,
                 gpus=GPUS) -> dict:
    """``{gpu: t_bf16 / t_ours}`` for a lattice GEMM kernel at ``M`` rows.

    ``instr_per_weight``: thread-instructions per weight per CTA row tile (from SASS); the weight tile is
    decoded by ``ceil(M / block_m)`` CTAs, so the instruction cost per weight is
    ``instr_per_weight * ceil(M / block_m)``.  ``tensor_flops_per_mac``: tensor-core ops per multiply-add
    (2; ``2 * kx * kw`` for the int8 W4A4 split by β pair); at least one ``block_m`` tile of rows is
    computed even when ``M < block_m`` (masked rows still go through the MMA).  ``once_instr_per_weight``: work
    done once per weight per call, not per row tile (e.g. the box W4A4's decode of the weight into int8 planes
    before the GEMM; its extra traffic belongs in ``stored_bytes_per_weight``).
    """
    tiles = -(-m // block_m)
    rows = tiles * block_m
    out = {}
    for gpu in gpus:
        ops = tensor_flops_per_mac * rows
        t = time_per_weight(gpu, instructions=instr_per_weight * tiles + once_instr_per_weight,
                            bytes_=stored_bytes_per_weight,
                            tensor_flops=0.0 if int8 else ops, tensor_int8_ops=ops if int8 else 0.0)
        out[gpu.name] = round(bf16_gemm_time_per_weight(gpu, m) / t, 4)
    return out


#: The linears of one Llama-3-8B decoder layer (hidden 4096, intermediate 14336, 8 KV heads of 128): ``weights`` =
#: sum of N K over q, k, v, o, gate, up, down; ``encoded_per_row`` = sum of K over their distinct inputs (q/k/v share
#: one, gate/up another: 3 hidden-size inputs + the intermediate one), for :func:`predict_w4a4_with_encode`.
LLAMA3_8B_LAYER = {"weights": float(4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336),
                   "encoded_per_row": float(3 * 4096 + 14336)}


def predict_w4a4_with_encode(gemm: dict, encodes: list[dict], *, weights: float, encoded_per_row: float, m: int,
                             gpus=GPUS) -> dict:
    """``{gpu: t_bf16 / (t_gemm + t_encode)}`` of a W4A4 layer whose activations are encoded by separate kernels.

    ``gemm``: :func:`predict_gemm`'s keyword arguments for the W4A4 GEMM (``instr_per_weight``,
    ``stored_bytes_per_weight``, ``block_m``, ``tensor_flops_per_mac``, ``int8``, ``once_instr_per_weight``);
    ``encodes``: per-element kernels run on every encoded activation (``instr_per_element``, ``bytes_per_element``:
    e.g. the box encode and the words -> int8 limbs conversion); ``weights``: sum of N K over the layer's linears;
    ``encoded_per_row``: sum of K over its distinct inputs (linears that share an input, q/k/v and gate/up,
    encode it once).  Times: ``weights * (GEMM time per weight)`` (the roofline of :func:`predict_gemm` at ``m``
    rows) plus ``m * encoded_per_row * sum(per-element roofline time)``, against ``weights *``
    :func:`bf16_gemm_time_per_weight` (the encode kernels and the GEMM do not overlap)."""
    tiles = -(-m // gemm["block_m"])
    ops = gemm.get("tensor_flops_per_mac", 2.0) * tiles * gemm["block_m"]
    int8 = gemm.get("int8", False)
    out = {}
    for gpu in gpus:
        instr = gemm["instr_per_weight"] * tiles + gemm.get("once_instr_per_weight", 0.0)
        t_w = time_per_weight(gpu, instructions=instr, bytes_=gemm["stored_bytes_per_weight"],
                              tensor_flops=0.0 if int8 else ops,
                              tensor_int8_ops=ops if int8 else 0.0)
        t_e = sum(time_per_weight(gpu, instructions=e["instr_per_element"], bytes_=e["bytes_per_element"])
                  for e in encodes)
        t = weights * t_w + m * encoded_per_row * t_e
        out[gpu.name] = round(weights * bf16_gemm_time_per_weight(gpu, m) / t, 4)
    return out


def predict_dequant_gemm(instr_per_weight: float, bytes_per_weight: float, *, m: int, gpus=GPUS) -> dict:
    """``{gpu: t_bf16 / (t_dequant + t_bf16)}``: a prefill path that decodes the weight once per call into BF16
    (``instr_per_weight``, ``bytes_per_weight`` read + written: the dequant kernel's roofline) and then runs the BF16
    GEMM itself at ``m`` rows; always below 1 (the decode is added to the BF16 time, not overlapped)."""
    out = {}
    for gpu in gpus:
        t_bf16 = bf16_gemm_time_per_weight(gpu, m)
        t_deq = time_per_weight(gpu, instructions=instr_per_weight, bytes_=bytes_per_weight)
        out[gpu.name] = round(t_bf16 / (t_deq + t_bf16), 4)
    return out


def predict_elementwise(instr_per_element: float, bytes_per_element: float, *, tensor_flops_per_element: float = 0.0,
                        gpus=GPUS) -> dict:
    """``{gpu: t_bf16_pass / t_ours}`` for a per-element kernel (encode, Hadamard), see :func:`bf16_elementwise_time`."""
    return {gpu.name: round(bf16_elementwise_time(gpu) / time_per_weight(
        gpu, instructions=instr_per_element, bytes_=bytes_per_element, tensor_flops=tensor_flops_per_element), 4)
        for gpu in gpus}


def constants() -> dict:
    """The constants used, for JSON reports."""
    return {gpu.name: gpu.as_dict() for gpu in GPUS}
