"""Dynamic per-row quantizers for activations (one row = one token's input to a linear) and
for the KV cache (one row = one head's key or value vector of one token).

``RowQuantizer(kind="lattice")``: per row ``s = max(RMS(x), max_b ||x_b|| / radius)`` (see
:func:`row_scale_guarded`; rounded up to fp16), the row is cut
into 8-vectors ``y = x / s`` and replaced by ``betas[i] * decode(code)`` chosen by the nested
lattice quantizer (unit-variance inputs, ``k`` betas); result ``s * y_hat``.
Bits per entry: ``log2 q + log2(k)/8 + 16/row``.

``RowQuantizer(kind="scalar")``: INT-``bits`` per row, asymmetric min/max (or symmetric
absmax) times ``clip_ratio``; see :mod:`llmquant.quant.scalar`.

Attributes a fused kernel can read: ``kind``, ``lattice``, ``q``, ``betas`` (buffer
float32 ``[k]``), ``bits``, ``symmetric``, ``clip_ratio``.

The same instance may be shared by linears that read the same input (q/k/v, gate/up): the
last input and its quantized version are memoized (same tensor object, same version
counter), so the shared input is quantized once per forward, as a fused kernel would.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn

from llmquant.quant import scalar as sq


class RowQuantizer(nn.Module):
    def __init__(
        self,
        kind: str,
        *,
        bits: int = 4,
        symmetric: bool = False,
        clip_ratio: float = 1.0,
        lattice: str = "E8",
        q: int = 14,
        betas: torch.Tensor | None = None,
        k: int | None = None,
        choose: str = "min_error",
    ):
        super().__init__()
        if kind not in ("scalar", "lattice"):
            raise ValueError(f"RowQuantizer: kind {kind!r} must be 'scalar' or 'lattice'")
        self.kind = kind
        self.bits = bits
        self.symmetric = symmetric
        self.clip_ratio = clip_ratio
        self.lattice = lattice
        self.q = q
        self.choose = choose
        if kind == "lattice":
            if betas is None:
                if k is None:
                    raise ValueError("RowQuantizer(kind='lattice') needs betas (or k for an empty shell to load into)")
                betas = torch.zeros(k)
            self.register_buffer("betas", betas.detach().to(torch.float32).clone())
        else:
            self.betas = None
        self._nlq = None
        self._memo = None

    def extra_repr(self) -> str:
        if self.kind == "lattice":
            return f"lattice={self.lattice}, q={self.q}, k={self.betas.numel()}"
        return f"scalar, bits={self.bits}, symmetric={self.symmetric}, clip_ratio={self.clip_ratio}"

    def _quantizer(self):
        from llmquant.lattice.nested import NestedLatticeQuantizer

        key = (self.betas.data_ptr(), self.betas._version, self.betas.device)
        if self._nlq is None or self._nlq[0] != key:
            self._nlq = (key, NestedLatticeQuantizer(self.lattice, self.q, self.betas.detach().clone(), choose=self.choose))
        return self._nlq[1]

    def quantize_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x [..., R]`` row by row (last dim); returns the same shape and dtype."""
        dtype = x.dtype
        xf = x.to(torch.float32)
        if self.kind == "scalar":
            scale, zero = sq.find_params(xf, self.bits, self.symmetric, clip_ratio=self.clip_ratio)
            out = sq.fake_quant(xf, scale, zero, self.bits)
        else:
            r = xf.shape[-1]
            if r % 8:
                raise ValueError(f"lattice activation quantizer: row length {r} is not divisible by 8")
            s = row_scale_guarded(xf, self.overload_radius())
            y = (xf / s).reshape(*xf.shape[:-1], r // 8, 8)
            out = self._quantizer().fake_quant(y).reshape(xf.shape) * s
        return out.to(dtype)

    def overload_radius(self) -> float:
        """:func:`overload_radius` of this quantizer's ``betas`` and ``q``."""
        return overload_radius(self.betas, self.q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        memo = self._memo
        if memo is not None and memo[0]() is x and memo[1] == x._version:
            return memo[2]
        out = self.quantize_rows(x)
        token = object()
        # weak reference to the input; the memo (and its output) is dropped as soon as the input dies,
        # so no activation outlives its forward pass
        self._memo = (weakref.ref(x), x._version, out, token)
        weakref.finalize(x, self._drop, token)
        return out

    def _drop(self, token) -> None:
        if self._memo is not None and self._memo[3] is token:
            self._memo = None

    def clear_memo(self) -> None:
        self._memo = None


def overload_radius(betas: torch.Tensor, q: int) -> float:
    """``q * max(betas) / sqrt(2)``: radius of the ball inscribed in the Voronoi cell of the coarse
    lattice ``q * beta_max * E8`` (E8 packing radius ``1/sqrt(2)``); 8-vectors inside it never overload.
    One function for the reference and the encode kernel, so both get the same float."""
    return int(q) * float(betas.to(torch.float32).max()) / math.sqrt(2.0)


def row_scale_guarded(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Per-row scale ``s [..., 1]`` of ``x [..., R]`` for the lattice quantizer, an fp16 value:

    ``s = max(RMS(x), max_b ||x_b|| / radius)`` over the row's 8-vectors ``x_b``, rounded *up* to fp16.
    The RMS makes entries unit variance (what the beta sets are optimized for); the guard raises the
    scale just enough that no 8-vector of ``x / s`` leaves the no-overload ball of the largest beta, so a
    heavy-tailed row (e.g. the o_proj input, only rotated per head) is never wrapped around modulo the
    coarse lattice: the error degrades like a clipped scalar quantizer instead of blowing up.
    """
    r = x.shape[-1]
    rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
    peak = x.reshape(*x.shape[:-1], r // 8, 8).norm(dim=-1).amax(dim=-1, keepdim=True) / radius
    s = torch.maximum(rms, peak)
    s = torch.where(s > 0, s, torch.ones_like(s))
    h = s.half()
    up = torch.nextafter(h, torch.full_like(h, float("inf")))
    return torch.where(h.float() < s, up, h).float()


def row_quantizer_from_config(d, k_hint: int | None = None) -> RowQuantizer | None:
    """Build a :class:`RowQuantizer` from a :class:`~llmquant.config.DynamicQuantConfig` (None for ``none``)."""
    if d.method == "none":
        return None
    if d.method == "scalar":
        return RowQuantizer("scalar", bits=d.bits, symmetric=d.symmetric, clip_ratio=d.clip_ratio)
    from llmquant.lattice.beta_search import load_beta_set

    return RowQuantizer("lattice", lattice=d.lattice, q=d.q, betas=load_beta_set(d.lattice, d.q, d.k).float(),
                        choose=d.choose)
