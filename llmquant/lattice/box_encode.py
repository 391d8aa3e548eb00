"""Box-code encoder with few tensor ops: the nearest codeword of :func:`llmquant.lattice.box.box_nearest`, bit for bit.

The search is the same (module docstring of :mod:`llmquant.lattice.box`): for a chunk of ``n <= 4096`` vectors
``y (n, 8)`` (the same chunks as ``box_nearest``) and every β_j, ``t = y^T / β_j`` ``(k, 8, n)``; per parity ``p``
the nearest parity-``p`` level index ``u_p`` and the error ``e_p = (t - λ[2 u_p + p])^2``;
``E = [H, 1-H] @ [e_1; e_0]`` ``(k, |C|, n)`` times ``β_j^2``; exact argmin over ``(j, m)`` (ties to the smallest
``|C| j + m``).  The difference is bookkeeping, which dominates at decode time (one token: 3 to 24 vectors per call):

* both parities in one tensor ``(k, 2, 8, n)`` (parity 1 first, so its reshape to ``(k, 16, n)`` is the
  reference's ``cat([e1, e0], 1)``, and the ``matmul`` sees the same operands);
* the winner's ``u`` and level are read back from that tensor (``u[v, i] = U[j_v, 1 - h_vi, i, v]``) instead of
  being recomputed: the same float ops (``y / β_j``, round, clamp), so the same integers;
* constants (β, β², levels, parity offsets, level midpoints, codewords) are built once per codec and device;
* words are assembled in int64 and their low 32 bits read through an int32 view (two's complement, as
  ``box._to_int32``).

Every elementwise op is the reference's op on the same fp32 values, so ``(j, m, u, x_hat)`` and the words are
identical (``tests/test_fast_decode.py``).
"""

from __future__ import annotations

import sys

import torch

#: vectors per search chunk: box_nearest's default (the matmul shapes must match it)
CHUNK = 4096


class _Consts:
    def __init__(self, codec, device):
        from llmquant.lattice.box import _select_matrix, codewords

        b = codec.b
        self.b, self.m_bits = b, codec.m_bits
        self.uniform = codec.level_table is None and float(codec.gamma) == 1.0
        self.betas = codec.betas.to(device=device, dtype=torch.float32)
        self.betas3 = self.betas[:, None, None]
        self.bsq = self.betas.square()[:, None, None]
        self.levels = codec.levels.to(device)
        par = torch.tensor([1, 0], device=device)
        self.par = par.view(1, 2, 1, 1)
        self.offs = (par.to(torch.float32) - (1 << b) + 0.5).view(1, 2, 1, 1)
        self.per_beta = codec.per_beta_levels
        if not self.uniform:
            lv = self.levels  # (2^(b+1),) or, per-β tables, (k, 2^(b+1))
            mids = [0.5 * (lv[..., p::2][..., 1:] + lv[..., p::2][..., :-1]) for p in (1, 0)]
            self.mids = torch.stack(mids, -2).view(-1, 2, 1, 1, (1 << b) - 1)
            if self.per_beta:  # flat offset of row j of the (k, 2^(b+1)) table
                self.lrow = (torch.arange(lv.shape[0], device=device) * lv.shape[1]).view(-1, 1, 1, 1)
        self.select = _select_matrix(codec.code, device)
        self.nc = self.select.shape[0]
        # row ids as int16 (|C| k <= 2^(M+K) = 256): the (k |C|, n) where/amin pass moves 2 bytes per entry, not 8
        self.rows = torch.arange(self.nc * self.betas.numel(), device=device, dtype=torch.int16)[:, None]
        self.no_row = torch.tensor(self.rows.shape[0], device=device, dtype=torch.int16)
        self.H = codewords(codec.code).to(device)
        self.ar8 = torch.arange(8, device=device)
        self.shifts = b * self.ar8
        self._hoffs: dict[int, torch.Tensor] = {}

    def grid(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v + i n + 8 n  (n, 8), 8 n H  (|C|, 8))`` int64: the flat offset of ``(slot 1 - h_i, i, v)`` in a
        ``(2, 8, n)`` block is ``grid[v, i] - hoff[m, i]``.  The grid depends on ``n`` only and is shared by every
        codec (:func:`_grid`); ``hoff`` is kept per codec (``|C| x 8``)."""
        h = self._hoffs.get(n)
        if h is None:
            if len(self._hoffs) > 64:
                self._hoffs.clear()
            h = self._hoffs[n] = self.H * (8 * n)
        return _grid(n, self.ar8), h


_GRIDS: dict = {}
#: shared search constants, one per distinct codec value and device (:func:`_consts`)
_SHARED: dict = {}


def _grid(n: int, ar8: torch.Tensor) -> torch.Tensor:
    """``v + i n + 8 n`` int64 ``(n, 8)``, cached per ``(n, device)`` for all codecs (at most 65 sizes)."""
    key = (n, str(ar8.device))
    g = _GRIDS.get(key)
    if g is None:
        if len(_GRIDS) > 64:
            _GRIDS.clear()
        g = _GRIDS[key] = torch.arange(n, device=ar8.device)[:, None] + ar8 * n + 8 * n
    return g


def _consts(codec, device) -> _Consts:
    """The search constants of ``codec`` on ``device``: one :class:`_Consts` per distinct codec value
    (:func:`llmquant.lattice.box_lut.codec_key`), shared by every codec object equal to it (a model has one
    quantizer per linear and KV slot, mostly with equal codecs), remembered on the codec object too."""
    cache = codec.__dict__.setdefault("_enc_cache", {})
    key = str(device)
    if key not in cache:
        from llmquant.lattice.box_lut import codec_key

        vkey = (codec_key(codec), key)
        shared = _SHARED.get(vkey)
        if shared is None:
            shared = _SHARED[vkey] = _Consts(codec, device)
        cache[key] = shared
    return cache[key]


def _search(c: _Consts, yt: torch.Tensor):
    """``(j (n,), m (n,), |C| j + m (n,), U (k, 2, 8, n), L (k, 2, 8, n) fp32)`` for a chunk ``yt (8, n)``: the
    winner and the per-(β, parity) level indices (float when γ = 1) / levels (parity 1 at index 0)."""
    n = yt.shape[1]
    t = (yt[None] / c.betas3).unsqueeze(1)  # (k, 1, 8, n)
    if c.uniform:  # λ[2u + p] = 2u + (p - 2^b + ½): exact in fp32, equal to the table entry
        U = (t - c.offs).mul_(0.5).round_().clamp_(0, (1 << c.b) - 1)
        L = torch.add(c.offs, U, alpha=2)
    else:
        U = (t.unsqueeze(-1) > c.mids).sum(-1)
        L = c.levels.take(U * 2 + c.par + c.lrow if c.per_beta else U * 2 + c.par)
    e = (t - L).square_()
    E = torch.matmul(c.select, e.reshape(e.shape[0], 16, n))
    E *= c.bsq
    E = E.reshape(-1, n)
    # exact argmin over rows, ties to the smallest row (E >= +0, finite or +inf): the smallest row equal to the min
    idx = torch.where(E == E.amin(0), c.rows, c.no_row).amin(0).to(torch.int64)
    return idx // c.nc, idx % c.nc, idx, U, L


def nearest(codec, x: torch.Tensor, want_words: bool = True, want_xhat: bool = True):
    """``(j, m, u, x_hat, words)`` of :func:`llmquant.lattice.box.box_nearest` for ``codec`` (words int32 as
    :meth:`BoxCodec.quantize` builds them); ``u``/``words`` None unless ``want_words``, ``x_hat`` None unless
    ``want_xhat``."""
    from llmquant.lattice.closest_point import check_finite

    if not torch.is_floating_point(x):
        raise TypeError(f"encode needs a floating-point tensor, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != 8:
        raise ValueError(f"expected (..., 8) vectors, got {tuple(x.shape)}")
    check_finite(x)
    c = _consts(codec, x.device)
    y = x.float().reshape(-1, 8)
    n = y.shape[0]
    lead = x.shape[:-1]
    if n == 0:
        e = torch.empty(lead, dtype=torch.int64, device=x.device)
        return (e, e.clone(), torch.empty(x.shape, dtype=torch.int64, device=x.device) if want_words else None,
                torch.empty_like(x) if want_xhat else None, e.to(torch.int32) if want_words else None)
    if x.device.type == "cpu":
        from . import native

        if native.available():  # the same search in C, bit for bit (one pass, no temporaries)
            j, m, u, xh, words = native.encode(codec, y, want_words, want_xhat)
            words = None if words is None else words.reshape(lead)
            u = None if u is None else u.reshape(x.shape)
            x_hat = None if xh is None else xh.to(x.dtype).reshape(x.shape)
            return j.reshape(lead), m.reshape(lead), u, x_hat, words
    if n <= CHUNK:  # one search chunk (every decode-time call): no output buffers, no copies
        j, m, u, xh, words = _chunk(c, y, want_words, want_xhat)
    else:
        # several chunks: every output is allocated once up front and each chunk writes its slice, so nothing
        # a chunk keeps is allocated between the next chunk's temporaries (which then reuse the same freed
        # blocks: the C allocator's resident size stays at one chunk's working set, not ratcheting up per chunk)
        j = torch.empty(n, dtype=torch.int64, device=x.device)
        m = torch.empty_like(j)
        u = torch.empty(n, 8, dtype=torch.int64, device=x.device) if want_words else None
        words = torch.empty(n, dtype=torch.int32, device=x.device) if want_words else None
        xh = torch.empty(n, 8, dtype=torch.float32, device=x.device) if want_xhat else None
        for s in range(0, n, CHUNK):
            e = min(s + CHUNK, n)
            res = _chunk(c, y[s:e], want_words, want_xhat)
            for buf, part in zip((j, m, u, xh, words), res):
                if buf is not None:
                    buf[s:e] = part
            del res
    words = None if words is None else words.reshape(lead)
    u = None if u is None else u.reshape(x.shape)
    x_hat = None if xh is None else xh.to(x.dtype).reshape(x.shape)
    return j.reshape(lead), m.reshape(lead), u, x_hat, words


def _chunk(c: _Consts, yc: torch.Tensor, want_words: bool, want_xhat: bool):
    """``(j, m (n,) int64, u (n, 8) int64 | None, x_hat (n, 8) float32 | None, words (n,) int32 | None)`` of one
    search chunk ``yc (n, 8)``."""
    from llmquant.lattice.box import _to_int32

    nn_ = yc.shape[0]
    j, m, jm, U, L = _search(c, yc.T.contiguous())
    grid, hoff = c.grid(nn_)
    # flat index of (j, parity h_i -> slot 1 - h_i, i, v) in the (k, 2, 8, n) tensors
    flat = (grid + (j * (16 * nn_))[:, None]).sub_(hoff.index_select(0, m))
    u = words = xh = None
    if want_words:
        u = U.take(flat).to(torch.int64)
        # top byte (m, j) = |C| j + m since |C| = 2^M
        w = (u << c.shifts).sum(-1).bitwise_or_(jm << (8 * c.b))
        words = w.view(torch.int32)[0::2] if sys.byteorder == "little" else _to_int32(w)
    if want_xhat:
        xh = c.betas.take(j)[:, None] * L.take(flat)
    return j, m, u, xh, words
