"""The structured parity-code (D8) search of the box activation encode (kernels/box_encode.py, ``STRUCT``).

A pure-PyTorch model of the kernel's rule (:func:`structured`, op for op the kernel's ``_parity_beta``) is checked
against the reference :func:`llmquant.lattice.box_encode.nearest` on random, tied and near-tied vectors: wherever
the rule declares itself decided (``ok``) its (j, m) is the reference's.  The kernel is then checked bit for bit
against ``RowQuantizer.encode_rows`` under the interpreter with the CUDA block layout (32-vector blocks), on rows
the model shows to take the structured path only and rows whose blocks need the runtime enumeration."""

from __future__ import annotations

import pytest
import torch
from _kernels_support import kernel_device

from llmquant.lattice.box import BoxCodec, shipped_box_codec
from llmquant.lattice.box_encode import nearest
from llmquant.quant.activations import RowQuantizer, box_row_scale

R19 = 2.0**-19
MAGIC = 12582912.0  # 1.5 * 2^23
ZERO = torch.zeros(())


def _both_errors(t: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's ``_both_errors``: (e_1, e_0) from the two half-integer levels bracketing t."""
    lim = float((1 << b) - 1)
    w = t.clamp(-lim, lim) + MAGIC
    r = w - MAGIC
    e_lo, e_hi = (t - (r - 0.5)).square(), (t - (r + 0.5)).square()
    r_odd = (w.view(torch.int32) & 1).bool()
    return torch.where(r_odd, e_hi, e_lo), torch.where(r_odd, e_lo, e_hi)


def _word_sum(hw: torch.Tensor, e1: torch.Tensor, e0: torch.Tensor) -> torch.Tensor:
    """The reference's sum order for codeword bits ``hw``: e_1 where h_i = 1 (i ascending), then e_0 where h_i = 0."""
    h = [((hw >> i) & 1).bool() for i in range(8)]
    acc = torch.where(h[0], e1[:, 0], ZERO)
    for i in range(1, 8):
        acc = acc + torch.where(h[i], e1[:, i], ZERO)
    for i in range(8):
        acc = acc + torch.where(h[i], ZERO, e0[:, i])
    return acc


def structured(codec: BoxCodec, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|C| j + m, ok)`` of the kernel's structured search (``_parity_beta``, op for op; the division ``y / β`` is
    the kernel's FMA division, equal to it: :func:`test_fma_division_is_ieee_division`) for ``y (n, 8)`` fp32;
    ``ok``: decided for both β."""
    b, n = codec.b, y.shape[0]
    big = torch.full((n,), 0x7FFFFFFF, dtype=torch.int32)
    out, ok_all = [], torch.ones(n, dtype=torch.bool)
    for j in range(2):
        beta = codec.betas[j]
        e1, e0 = _both_errors(y / beta, b)
        db = (e1 - e0).view(torch.int32)
        h0w = torch.zeros(n, dtype=torch.int32)
        k1, k2, k3 = big, big, big
        for i in range(8):
            h0w = h0w | (((db[:, i] >> 31) & 1) << i)
            key = (db[:, i] & 0x7FFFFFF8) | i
            n1, x = torch.minimum(k1, key), torch.maximum(k1, key)
            n2, x = torch.minimum(k2, x), torch.maximum(k2, x)
            k1, k2, k3 = n1, n2, torch.minimum(k3, x)
        a1, a2, a3 = ((k & 0x7FFFFFF8).view(torch.float32) for k in (k1, k2, k3))
        par = h0w ^ (h0w >> 4)
        par = par ^ (par >> 2)
        par = (par ^ (par >> 1)) & 1
        om = -par
        b1 = 1 << (k1 & 7)
        ha = h0w ^ (b1 & om)
        hb = h0w ^ (1 << (k2 & 7)) ^ (b1 & ~om)
        fa = _word_sum(ha, e1, e0)
        ea, eb = fa * (beta * beta), _word_sum(hb, e1, e0) * (beta * beta)
        ma, mb = ha & 127, hb & 127
        use_b = (eb < ea) | ((eb == ea) & (mb < ma))
        sgn = torch.where(par != 0, -a1, a1)
        ok = ((a2 + sgn) > (fa + (a1 + a2)) * R19) | ((a3 + sgn) > (fa + (a1 + a3)) * R19)
        out.append((torch.where(use_b, eb, ea), torch.where(use_b, mb, ma).long()))
        ok_all &= ok
    (e_0, m_0), (e_1, m_1) = out
    return torch.where(e_1 < e_0, 128 + m_1, m_0), ok_all


def test_fma_division_is_ieee_division():
    """The kernel's ``_div_by`` (q = a * fl(1/b), two FMA residual steps) equals IEEE division: every fp32 mantissa
    over the shipped parity β, and every fp16 scale mantissa over 4096 random fp32 mantissas (the quotient's bits
    do not depend on the exponents while it stays normal); the FMA is the interpreter's (one rounding)."""
    import numpy as np
    from triton._C.libtriton import interpreter as _interp

    fma = _interp.fma_fp32
    f32 = np.float32

    def div_by(a, b):
        b = np.full_like(a, b)
        rb = (f32(1.0) / b).astype(f32)
        q = (a * rb).astype(f32)
        q = fma(fma(-q, b, a), rb, q)
        return fma(fma(-q, b, a), rb, q)

    mant = (np.arange(1 << 23, dtype=np.uint32) | np.uint32(0x3F800000)).view(f32)  # [1, 2)
    for beta in shipped_box_codec(3, "d8int8").betas.tolist():
        assert np.array_equal(div_by(mant, f32(beta)), (mant / f32(beta)).astype(f32)), beta
    xs = np.random.default_rng(0).choice(mant, 4096)
    for s in (np.arange(1024, dtype=np.uint16) | np.uint16(0x3C00)).view(np.float16).astype(f32):
        assert np.array_equal(div_by(xs, s), (xs / s).astype(f32)), s


def test_two_op_division_is_ieee_division():
    """The kernel's ``_div_fast`` (``fl(a zh + fl(a zl))``, ``zh = fl(1/b)``, ``zl = fl(fl(1 - b zh) zh)``): the IEEE
    quotient for every fp32 mantissa over the shipped parity β, and for every fp16 / bf16 x mantissa over every fp16
    scale mantissa (the x / s of fp16 / bf16 rows); ``fast_division_exact`` (the host check that gates the structured
    search) agrees with this brute force (interpreter FMA, one rounding) on the shipped β and on a β where one
    mantissa's quotient is off."""
    import numpy as np
    from llmquant.kernels.box_encode import fast_division_exact
    from triton._C.libtriton import interpreter as _interp

    fma = _interp.fma_fp32
    f32 = np.float32

    def div_fast(a, b):
        b = np.full_like(a, b)
        zh = (f32(1.0) / b).astype(f32)
        zl = (fma(-zh, b, np.ones_like(a)) * zh).astype(f32)
        return fma(a, zh, (a * zl).astype(f32))

    mant = (np.arange(1 << 23, dtype=np.uint32) | np.uint32(0x3F800000)).view(f32)  # [1, 2)
    for beta in shipped_box_codec(3, "d8int8").betas.tolist() + [0.8271467089653015]:
        wrong = int((div_fast(mant, f32(beta)) != (mant / f32(beta)).astype(f32)).sum())
        assert fast_division_exact(beta) == (wrong == 0), (beta, wrong)
        assert (wrong == 0) == (beta != 0.8271467089653015), (beta, wrong)
    bf16 = (np.arange(128, dtype=np.uint32) << 16 | np.uint32(0x3F800000)).view(f32)
    fp16 = (np.arange(1024, dtype=np.uint16) | np.uint16(0x3C00)).view(np.float16).astype(f32)
    for s in fp16:
        for xs in (bf16, fp16):
            assert np.array_equal(div_fast(xs, s), (xs / s).astype(f32)), s


@pytest.mark.kernels
def test_kernel_parity_codec_without_exact_two_op_division(dev):
    """A parity codec with a β whose two-op division misses one mantissa takes the enumeration of every (β, codeword)
    with IEEE divisions: the words are still the reference's."""
    from llmquant.kernels.box_encode import box_encode_rows, fast_division_exact

    codec = BoxCodec(3, [0.45316419, 0.8271467089653015], "parity")
    assert not fast_division_exact(float(codec.betas[1]))
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(4)).bfloat16()
    words, scales = box_encode_rows(x.to(dev), codec, config=_cuda_layout(x.shape[0]))
    rw, rs = RowQuantizer("box", codec=codec).encode_rows(x.to(dev))
    assert torch.equal(scales.cpu(), rs.cpu()) and torch.equal(words.cpu(), rw.cpu())


def _vectors(codec: BoxCodec, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Named sets of 8-vectors (fp32, the encode's y = x / s): Gaussian, rows of bf16 activations with outliers,
    t on the level grid / midpoints for each β (ties), equal magnitudes, zeros, ±max outliers, mirrored pairs,
    ulp-perturbed ties."""
    beta = codec.betas
    sets = {"gauss": torch.randn(n, 8, generator=g) * (0.2 + 2 * torch.rand(n, 1, generator=g))}
    x = torch.randn(n // 512, 4096, generator=g)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.01, 40 * x, x).bfloat16().float()
    sets["rows_bf16"] = (x / box_row_scale(x)).reshape(-1, 8)
    for j in range(2):
        k = torch.randint(-20, 21, (n, 8), generator=g).float()
        frac = torch.tensor([0.0, 0.5, 0.25, 0.75])[torch.randint(0, 4, (n, 8), generator=g)]
        sets[f"grid{j}"] = (k + frac) * 0.5 * beta[j]
        sets[f"int{j}"] = k * beta[j]
    c = torch.randn(n, 1, generator=g)
    sgn = torch.randint(0, 2, (n, 8), generator=g) * 2 - 1.0
    sets["equal_mag"] = torch.where(torch.rand(n, 8, generator=g) < 0.5, c * sgn, torch.randn(n, 8, generator=g))
    z = torch.randn(n, 8, generator=g)
    sets["zeros"] = torch.where(torch.rand(n, 8, generator=g) < 0.3, 0.0, z)
    o = torch.randn(n, 8, generator=g) * 0.01
    o[:, 0] = 64.0 * torch.sign(torch.randn(n, generator=g))
    sets["outlier"] = o
    y = torch.randn(n, 8, generator=g)
    y[:, 3] = -y[:, 5]
    y[:, 1] = y[:, 6] + torch.randint(-2, 3, (n,), generator=g) * 2 * beta[0]
    sets["mirror"] = y
    y = (torch.randint(-8, 9, (n, 8), generator=g).float() + 0.5) * beta[0]
    sets["ulp"] = y + torch.randint(-3, 4, (n, 8), generator=g).float() * 1e-7 * y.abs()
    sets["zero_vec"] = torch.zeros(64, 8)
    return sets


@pytest.mark.parametrize("codec", [shipped_box_codec(3, "d8int8"), BoxCodec(3, [0.5, 1.0], "parity"),
                                   BoxCodec(2, [0.35, 0.9], "parity"), BoxCodec(1, [0.35, 0.9], "parity")],
                         ids=["d8int8", "b3-half-one", "b2", "b1"])
def test_structured_rule_is_the_reference_where_decided(codec):
    g = torch.Generator().manual_seed(11)
    decided = {}
    for name, y in _vectors(codec, 20000, g).items():
        jm, ok = structured(codec, y)
        rj, rm = nearest(codec, y, want_words=False, want_xhat=False)[:2]
        wrong = ok & (jm != rj * 128 + rm)
        assert not wrong.any(), f"{name}: {int(wrong.sum())} decided vectors differ, first {y[wrong][0].tolist()}"
        decided[name] = float(ok.float().mean())
    # the structured path decides almost every Gaussian vector; exact ties are left to the enumeration
    assert decided["gauss"] > 0.999 and decided["rows_bf16"] > 0.98, decided
    assert decided["zero_vec"] == 0.0, decided


@pytest.fixture(scope="module")
def dev() -> torch.device:
    return kernel_device()


def _cuda_layout(m: int) -> dict:
    """The CUDA launch's block layout for ``m`` rows (one row per program, 32-vector blocks), division mean."""
    return {"num_warps": 1, "SPLIT": 1, "BLOCK_R": 1, "BLOCK_V": 32, "BLOCK_K": 256, "MEAN_MUL": False,
            "grid": (m, 1)}


def _blocks_decided(codec: BoxCodec, x: torch.Tensor) -> torch.Tensor:
    """Per (row, 32-vector block): does the model decide every vector of it (the kernel's structured-only path)?"""
    y = (x.float() / box_row_scale(x.float())).reshape(x.shape[0], -1, 8)
    ok = structured(codec, y.reshape(-1, 8))[1].reshape(y.shape[:2])
    nv = y.shape[1]
    pad = torch.ones(x.shape[0], -nv % 32, dtype=torch.bool)
    return torch.cat([ok, pad], 1).reshape(x.shape[0], -1, 32).all(-1)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_d8int8_bit_identical_on_both_paths(dev, dtype):
    from llmquant.kernels.box_encode import box_encode_rows

    codec = shipped_box_codec(3, "d8int8")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 520, generator=g) * (0.05 + 3 * torch.rand(6, 1, generator=g))  # 65 vectors: 3 blocks, masked
    x[1] = torch.where(torch.rand(520, generator=g) < 0.03, 40 * x[1], x[1])  # outliers
    x[2, :256] = 0.0  # zero vectors, then a Gaussian tail
    x[3] = (torch.randint(-3, 4, (520,), generator=g) * 2.0).float()  # on the level grid: ties
    x[4, 8:16] = 0.0
    x[4, 16] = 1e4  # a ±max outlier that dominates its row's scale
    x[4, 24:32] = x[4, 32:40] = -x[4, 40:48]  # equal magnitudes
    x[5] = 0.0  # a zero row
    x = x.to(dtype)
    decided = _blocks_decided(codec, x)
    assert decided.any() and (~decided).any(), decided  # both the structured path and the enumeration run
    words, scales = box_encode_rows(x.to(dev), codec, config=_cuda_layout(x.shape[0]))
    rw, rs = RowQuantizer("box", codec=codec).encode_rows(x.to(dev))
    assert torch.equal(scales.cpu(), rs.cpu())
    diff = (words.cpu() != rw.cpu()).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} words differ, first at {diff[0].tolist()}"
    assert (words < 0).any()  # j = 1 (bit 31) among the winners


@pytest.mark.kernels
def test_kernel_d8_ties_with_given_scales(dev):
    """Exact ties at s = 1: inputs on the integer / half-integer grid of each β and zeros, every block through the
    enumeration, compared with ``BoxCodec.encode``; and Gaussian rows (structured path only, by the model)."""
    from llmquant.kernels.box_encode import box_encode_rows

    codec = shipped_box_codec(3, "d8int8")
    g = torch.Generator().manual_seed(9)
    k = torch.randint(-12, 13, (4, 256), generator=g).float()
    x = torch.cat([k * codec.betas[0], (k + 0.5) * codec.betas[1]]).float()
    x[0, :64] = 0.0
    ones = torch.ones(x.shape[0], device=dev)
    words = box_encode_rows(x.to(dev), codec, scales=ones, config=_cuda_layout(x.shape[0]))[0]
    assert torch.equal(words.cpu(), codec.encode(x.reshape(8, 32, 8)))
    gx = torch.randn(3, 512, generator=g)
    assert _blocks_decided(codec, gx).all()
    words = box_encode_rows(gx.to(dev), codec, config=_cuda_layout(gx.shape[0]))[0]
    assert torch.equal(words.cpu(), RowQuantizer("box", codec=codec).encode_rows(gx)[0])


def test_w4a4_prediction_with_encode():
    """kernels/cost_model.py's W4A4-with-encode prediction: no encode = the GEMM's own prediction; an encode kernel
    only slows it; at M = 2048 the encode time is m * elements * its roofline time per element."""
    from llmquant.kernels.cost_model import H200, predict_gemm, predict_w4a4_with_encode, time_per_weight

    gemm = {"instr_per_weight": 1.719, "stored_bytes_per_weight": 2.5005, "block_m": 128,
            "tensor_flops_per_mac": 2.0, "int8": True, "once_instr_per_weight": 10.562}
    alone = predict_gemm(1.719, 2.5005, m=2048, block_m=128, tensor_flops_per_mac=2.0, int8=True,
                         once_instr_per_weight=10.562)
    shape = {"weights": 4096.0 * 14336, "encoded_per_row": 4096.0, "m": 2048}
    assert predict_w4a4_with_encode(gemm, [], **shape) == pytest.approx(alone, abs=1e-4)
    enc = [{"instr_per_element": 110.0, "bytes_per_element": 2.5}]
    with_enc = predict_w4a4_with_encode(gemm, enc, **shape)
    assert all(with_enc[g] < alone[g] for g in alone)
    t_bf16 = 2 * 2048 / H200.bf16_flops * shape["weights"]
    t_enc = 2048 * 4096 * time_per_weight(H200, instructions=110.0, bytes_=2.5)
    assert with_enc["H200"] == pytest.approx(t_bf16 / (t_bf16 / alone["H200"] + t_enc), rel=1e-3)
    # the README's figure: llama3-8b linears (q/k/v share an input, gate/up too), M = 2048, the D8 W4A4 prefill
    # GEMM row of `llmquant bench kernels --sass` (1.719 instr/weight, 2.5005 B/weight, 10.562 for the weight planes),
    # the d8int8 encode's hot path (90.125 instr/element, 2.5 B) and the words -> int8 activation limbs (10.562, 1.5 B)
    from llmquant.kernels.cost_model import LLAMA3_8B_LAYER

    h, i, kv = 4096, 14336, 1024
    llama = {"weights": float(h * (h + 2 * kv) + h * h + 2 * h * i + i * h), "encoded_per_row": float(3 * h + i),
             "m": 2048}
    assert llama == dict(LLAMA3_8B_LAYER, m=2048)
    encs = [{"instr_per_element": 90.125, "bytes_per_element": 2.5},
            {"instr_per_element": 10.562, "bytes_per_element": 1.5}]
    pred = predict_w4a4_with_encode(gemm, encs, **llama)
    assert pred["H200"] == pytest.approx(1.4238, abs=1e-3) and pred["H100"] == pytest.approx(1.4122, abs=1e-3)
    # the encode writing the int8 limbs itself (box_encode_rows_int8: 95.875 instr/element; reads 2 B, writes the
    # 0.5 B words and the 1 B limb): no separate conversion pass
    fused = predict_w4a4_with_encode(gemm, [{"instr_per_element": 95.875, "bytes_per_element": 3.5}], **llama)
    assert fused["H200"] == pytest.approx(1.4437, abs=1e-3) and fused["H100"] == pytest.approx(1.4437, abs=1e-3)
    encs[0]["instr_per_element"] = 389.875  # the unrolled enumeration
    assert predict_w4a4_with_encode(gemm, encs, **llama)["H200"] == pytest.approx(0.766, abs=1e-3)


@pytest.mark.kernels
@pytest.mark.parametrize("variant", ["d8int8", "int"])
def test_kernel_infinite_scale_row(dev, variant):
    """A row whose RMS overflows fp16 (scale inf): the reference encodes y = x / inf = 0; so does the FMA division
    (reciprocal 0, divisor 1)."""
    from llmquant.kernels.box_encode import box_encode_rows

    codec = shipped_box_codec(3, variant)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    x[1] = 1e6
    words, scales = box_encode_rows(x.to(dev), codec)
    rw, rs = RowQuantizer("box", codec=codec).encode_rows(x)
    assert float(scales[1]) == float("inf") and torch.equal(scales.cpu(), rs)
    assert torch.equal(words.cpu(), rw)


def _fp64_costs(codec: BoxCodec, y: torch.Tensor) -> torch.Tensor:
    """``[n, k |C|]`` fp64 squared errors of every (β, codeword) for ``y (n, 8)`` (the nearest level of each
    coordinate's parity, clamped to the box), column ``|C| j + m``: the exact minimum a nearest rule must reach."""
    from llmquant.lattice.box import codewords

    y = y.double()
    h = codewords(codec.code).double()  # (|C|, 8)
    top = (1 << codec.b) - 1
    cols = []
    for beta in codec.betas.double().tolist():
        t = y / beta
        e = []
        for p in (1, 0):
            o = p - (1 << codec.b) + 0.5
            u = torch.round((t - o) / 2).clamp(0, top)
            e.append((t - (o + 2 * u)).square() * beta * beta)
        cols.append(e[0] @ h.T + e[1] @ (1 - h).T)
    return torch.cat(cols, 1)


@pytest.mark.kernels
@pytest.mark.parametrize("codec", [shipped_box_codec(3, "d8int8"), BoxCodec(2, [0.35, 0.9], "parity"),
                                   BoxCodec(1, [0.35, 0.9], "parity")], ids=["d8int8", "b2", "b1"])
def test_kernel_nearest_rule_is_a_nearest_codeword(dev, codec):
    """``rule="nearest"`` (the W4A4 dispatch's default): on every named vector set (Gaussian, bf16 rows with
    outliers, the level grid and its midpoints per β, equal magnitudes, zeros, ±64 outliers, mirrored pairs,
    ulp-perturbed ties), at s = 1, the chosen codeword's fp64 error is the fp64 minimum over all 2 x 128 codewords
    within 2^-17 relative, and its words are the reference's wherever that minimum is unique by more than 2^-14;
    the int8 limbs are those of its words."""
    from llmquant.kernels.box_encode import box_encode_rows, box_encode_rows_int8

    g = torch.Generator().manual_seed(21)
    for name, y in _vectors(codec, 1024 if codec.b == 3 else 512, g).items():  # interpreter time: keep it small
        n = y.shape[0] // 32 * 32
        y = y[:n].float()
        x = y.reshape(-1, 256)
        ones = torch.ones(x.shape[0], device=dev)
        words = box_encode_rows(x.to(dev), codec, scales=ones, config=_cuda_layout(x.shape[0]),
                                rule="nearest")[0].cpu().reshape(-1)
        costs = _fp64_costs(codec, y)
        best = costs.min(1).values
        got = (codec.decode_reference(words, torch.float64) - y.double()).square().sum(-1)
        assert (got <= best * (1 + 2.0**-17) + 1e-300).all(), (name, (got / best.clamp_min(1e-300)).max())
        ref = codec.encode(y)
        second = costs.sort(1).values[:, 1]
        unique = second > best * (1 + 2.0**-14)
        assert torch.equal(words[unique], ref[unique]), name
        if name in ("gauss", "rows_bf16"):  # the tie sets are built to have few unique minima
            assert unique.float().mean() > 0.9, (name, unique.float().mean())
    if codec.b == 3:
        x = torch.randn(4, 512, generator=g).bfloat16()
        words, scales, planes = box_encode_rows_int8(x.to(dev), codec, config=_cuda_layout(4), rule="nearest")
        from llmquant.kernels import box_w4a4 as W

        kx = W.codec_constants(codec, dev)
        t = W.int_coords_reference(words.cpu(), codec.b, kx["ratios"], codec.code)
        assert torch.equal(planes.cpu(), W.split_limbs_reference(t, kx["limbs"]))
        assert torch.equal(scales.cpu(), box_row_scale(x.float()).squeeze(-1))


def test_encode_rule_names_are_checked(monkeypatch):
    """An unknown rule is one clear line; ``LLMQUANT_ENCODE_RULE`` picks the dispatch's rule (default nearest)."""
    from llmquant.kernels.box_encode import DEFAULT_DISPATCH_RULE, box_encode_rows, dispatch_rule

    with pytest.raises(ValueError, match="rule 'fast' is not one of reference, nearest"):
        box_encode_rows(torch.zeros(1, 8), shipped_box_codec(3, "d8int8"), rule="fast")
    monkeypatch.delenv("LLMQUANT_ENCODE_RULE", raising=False)
    assert dispatch_rule() == DEFAULT_DISPATCH_RULE == "nearest"
    monkeypatch.setenv("LLMQUANT_ENCODE_RULE", "reference")
    assert dispatch_rule() == "reference"
    monkeypatch.setenv("LLMQUANT_ENCODE_RULE", "exact")
    with pytest.raises(ValueError, match="LLMQUANT_ENCODE_RULE='exact' is not a box encode rule"):
        dispatch_rule()
