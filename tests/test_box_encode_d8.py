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

R19, R22 = 2.0**-19, 2.0**-22
ZERO = torch.zeros(())


def _errs(t: torch.Tensor, off: float, b: int) -> torch.Tensor:
    u = ((t - off) * 0.5).round().clamp(0, (1 << b) - 1)
    return (t - (off + 2 * u)).square()


def _ref_sum(h: torch.Tensor, e1: torch.Tensor, e0: torch.Tensor) -> torch.Tensor:
    acc = torch.where(h[:, 0], e1[:, 0], ZERO)
    for i in range(1, 8):
        acc = acc + torch.where(h[:, i], e1[:, i], ZERO)
    for i in range(8):
        acc = acc + torch.where(h[:, i], ZERO, e0[:, i])
    return acc


def structured(codec: BoxCodec, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|C| j + m, ok)`` of the kernel's structured search for ``y (n, 8)`` fp32 (``ok``: decided for both β)."""
    b, n = codec.b, y.shape[0]
    inf = torch.full((n,), float("inf"))
    ar = torch.arange(8)
    out, ok_all = [], torch.ones(n, dtype=torch.bool)
    for j in range(2):
        beta = codec.betas[j]
        t = y / beta
        e1, e0 = _errs(t, 1.5 - (1 << b), b), _errs(t, 0.5 - (1 << b), b)
        d = e1 - e0
        h0 = d < 0
        odd = (h0.sum(1) & 1).bool()
        a1, a2, a3 = inf.clone(), inf.clone(), inf.clone()
        k1 = torch.zeros(n, dtype=torch.int64)
        k2 = k1.clone()
        for i in range(8):
            ai = d[:, i].abs()
            lt1, lt2 = ai < a1, ai < a2
            a3 = torch.where(lt2, a2, torch.minimum(a3, ai))
            a2 = torch.where(lt1, a1, torch.where(lt2, ai, a2))
            k2 = torch.where(lt1, k1, torch.where(lt2, torch.full_like(k2, i), k2))
            a1 = torch.where(lt1, ai, a1)
            k1 = torch.where(lt1, torch.full_like(k1, i), k1)
        f1, f2 = ar == k1[:, None], ar == k2[:, None]
        ha = h0 ^ (odd[:, None] & f1)
        hb = h0 ^ f2 ^ (~odd[:, None] & f1)
        fa = _ref_sum(ha, e1, e0)
        ea, eb = fa * (beta * beta), _ref_sum(hb, e1, e0) * (beta * beta)
        ma, mb = ((h[:, :7].long() << ar[:7]).sum(1) for h in (ha, hb))
        use_b = (eb < ea) | ((eb == ea) & (mb < ma))
        sgn = torch.where(odd, -a1, a1)
        ok = ((a2 + sgn) > (fa * R19 + (a1 + a2) * R22)) | ((a3 + sgn) > (fa * R19 + (a1 + a3) * R22))
        out.append((torch.where(use_b, eb, ea), torch.where(use_b, mb, ma)))
        ok_all &= ok
    (e_0, m_0), (e_1, m_1) = out
    return torch.where(e_1 < e_0, 128 + m_1, m_0), ok_all


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
    for name, y in _vectors(codec, 40000, g).items():
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
