"""Exact bit packing of lattice codes and β indices.

Three packers, each round-trips bit-exactly:

* :func:`pack_codes` (what the kernels read): the 8 codes of one 8-vector (each < 16) in
  one int32 word, code ``j`` in bits ``[4j, 4j+4)`` (bit 31 is the top bit of code 7, so
  words are negative when code 7 >= 8; read them as uint32).  Stored rate 4 bits/entry.
* :func:`pack_bits` / :func:`unpack_bits`: a flat little-endian bit stream of ``width``-bit
  values (1 <= width <= 16): value ``i`` occupies stream bits ``[i*width, (i+1)*width)``,
  bit ``b`` of the stream is bit ``b % 32`` of int32 word ``b // 32``; the last word is
  zero-padded.  Uses ``ceil(n * width / 32)`` words.
* :func:`pack_mixed_radix` / :func:`unpack_mixed_radix`: digits ``d_i < r_i`` as the single
  integer ``V = sum_i d_i * prod_{j<i} r_j`` written in ``mixed_radix_bits(radices) =
  bitlength(prod r_i - 1)`` bits (little-endian bytes, last byte zero-padded).  This is the
  exact packer behind the reported rate ``log2(q) + log2(k)/8`` (up to < 1 bit per stream).
  Pure Python big integers: meant for rate accounting and storage of one row/column at a
  time (cost quadratic in the stream length), not for kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _to_int32(words64: torch.Tensor) -> torch.Tensor:
    # reinterpret the low 32 bits as a signed int32 (two's complement)
    return torch.where(words64 >= 2**31, words64 - 2**32, words64).to(torch.int32)


def _check_int(t: torch.Tensor, what: str) -> None:
    if torch.is_floating_point(t) or torch.is_complex(t) or t.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor, got {t.dtype}")


def pack_codes(codes: torch.Tensor, q: int = 16) -> torch.Tensor:
    """Nibble-pack ``codes (..., 8)`` (integers in [0, q), q <= 16) into int32 ``(...)``."""
    _check_int(codes, "codes")
    if not 2 <= q <= 16:
        raise ValueError(f"pack_codes stores 4-bit codes: q must be in [2, 16], got {q}")
    if codes.dim() == 0 or codes.shape[-1] != 8:
        raise ValueError(f"pack_codes expects shape (..., 8), got {tuple(codes.shape)}")
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= q):
        raise ValueError(f"codes must lie in [0, {q}), got range [{int(c.min())}, {int(c.max())}]")
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=c.device)
    return _to_int32((c << shifts).sum(-1))


def unpack_codes(words: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 ``(...)`` -> uint8 ``(..., 8)``."""
    _check_int(words, "words")
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=w.device)
    return ((w[..., None] >> shifts) & 0xF).to(torch.uint8)


def pack_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack the flattened ``values`` (integers in [0, 2^width)) into a 1-D int32 bit stream."""
    _check_int(values, "values")
    if int(width) != width or not 1 <= width <= 16:
        raise ValueError(f"width must be an integer in [1, 16], got {width!r}")
    v = values.reshape(-1).to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << width):
        raise ValueError(f"values must lie in [0, 2^{width}) for width {width}, got range "
                         f"[{int(v.min())}, {int(v.max())}]: use a larger width")
    n = v.numel()
    n_words = -(-n * width // 32)
    bits = ((v[:, None] >> torch.arange(width, device=v.device)) & 1).reshape(-1)
    stream = torch.zeros(n_words * 32, dtype=torch.int64, device=v.device)
    stream[: bits.numel()] = bits
    words = (stream.view(n_words, 32) << torch.arange(32, device=v.device)).sum(-1)
    return _to_int32(words)


def unpack_bits(words: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` values (int64, 1-D)."""
    _check_int(words, "words")
    if int(width) != width or not 1 <= width <= 16:
        raise ValueError(f"width must be an integer in [1, 16], got {width!r}")
    w = words.reshape(-1).to(torch.int64) & 0xFFFFFFFF
    if n < 0 or n * width > w.numel() * 32:
        raise ValueError(f"{w.numel()} words hold at most {w.numel() * 32 // width} values of width {width}, asked {n}")
    bits = ((w[:, None] >> torch.arange(32, device=w.device)) & 1).reshape(-1)[: n * width]
    return (bits.view(n, width) << torch.arange(width, device=w.device)).sum(-1)


def mixed_radix_bits(radices: Sequence[int] | torch.Tensor) -> int:
    """Bits :func:`pack_mixed_radix` uses for these radices: ``bitlength(prod r_i - 1)``."""
    prod = 1
    for r in _radix_list(radices):
        prod *= r
    return (prod - 1).bit_length()


def _radix_list(radices) -> list[int]:
    rs = [int(r) for r in (radices.tolist() if isinstance(radices, torch.Tensor) else radices)]
    if any(r < 1 for r in rs):
        raise ValueError("every radix must be >= 1")
    return rs


def _product_tree(rs: list[int]) -> int:
    # balanced products keep the big-integer work near-linear
    if not rs:
        return 1
    while len(rs) > 1:
        rs = [rs[i] * rs[i + 1] if i + 1 < len(rs) else rs[i] for i in range(0, len(rs), 2)]
    return rs[0]


def _combine(ds: list[int], rs: list[int]) -> tuple[int, int]:
    """(value, radix product) of digits ``ds`` with radices ``rs`` by divide and conquer."""
    if len(ds) <= 64:
        v, p = 0, 1
        for d, r in zip(ds, rs):
            v += d * p
            p *= r
        return v, p
    h = len(ds) // 2
    lo, plo = _combine(ds[:h], rs[:h])
    hi, phi = _combine(ds[h:], rs[h:])
    return lo + plo * hi, plo * phi


def pack_mixed_radix(digits: torch.Tensor | Sequence[int], radices: torch.Tensor | Sequence[int]) -> tuple[bytes, int]:
    """Pack digits (``0 <= d_i < r_i``) exactly; returns ``(data, n_bits)`` with
    ``n_bits == mixed_radix_bits(radices)`` and ``len(data) == ceil(n_bits / 8)``."""
    ds = [int(d) for d in (digits.reshape(-1).tolist() if isinstance(digits, torch.Tensor) else digits)]
    rs = _radix_list(radices)
    if len(ds) != len(rs):
        raise ValueError(f"{len(ds)} digits but {len(rs)} radices: give one radix per digit")
    for i, (d, r) in enumerate(zip(ds, rs)):
        if not 0 <= d < r:
            raise ValueError(f"digit {i} = {d} is outside [0, {r})")
    value, prod = _combine(ds, rs)
    n_bits = (prod - 1).bit_length()
    return value.to_bytes(-(-n_bits // 8), "little"), n_bits


def _split(value: int, rs: list[int], out: list[int]) -> None:
    if len(rs) <= 64:
        for r in rs:
            value, d = divmod(value, r)
            out.append(d)
        return
    h = len(rs) // 2
    hi, lo = divmod(value, _product_tree(rs[:h]))
    _split(lo, rs[:h], out)
    _split(hi, rs[h:], out)


def unpack_mixed_radix(data: bytes, radices: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_mixed_radix`: the digits as an int64 tensor (1-D)."""
    rs = _radix_list(radices)
    n_bits = mixed_radix_bits(rs)
    if len(data) != -(-n_bits // 8):
        raise ValueError(f"expected {-(-n_bits // 8)} bytes for these radices, got {len(data)}")
    value = int.from_bytes(data, "little")
    if value >= _product_tree(list(rs)):
        raise ValueError("packed value is out of range for these radices: corrupted data or wrong radices")
    out: list[int] = []
    _split(value, rs, out)
    return torch.tensor(out, dtype=torch.int64)


def nested_stream_radices(n_vectors: int, q: int, k: int, d: int = 8) -> list[int]:
    """Radices of one row/column stream of ``n_vectors`` d-vectors: ``d * n`` codes (radix q),
    then ``n`` β indices (radix k)."""
    return [q] * (d * n_vectors) + [k] * n_vectors


def stream_bits_exact(n_vectors: int, q: int, k: int, d: int = 8) -> int:
    """Bits of :func:`pack_mixed_radix` on :func:`nested_stream_radices` (computed without packing)."""
    return (q ** (d * n_vectors) * k**n_vectors - 1).bit_length()


def pack_nested_stream(codes: torch.Tensor, beta_idx: torch.Tensor, q: int, k: int) -> tuple[bytes, int]:
    """Mixed-radix pack one stream: ``codes (n, d)`` in [0, q) then ``beta_idx (n,)`` in [0, k)."""
    if codes.dim() != 2 or beta_idx.shape != codes.shape[:1]:
        raise ValueError(f"expected codes (n, d) and beta_idx (n,), got {tuple(codes.shape)} and {tuple(beta_idx.shape)}")
    n, d = codes.shape
    digits = codes.reshape(-1).tolist() + beta_idx.reshape(-1).tolist()
    return pack_mixed_radix(digits, nested_stream_radices(n, q, k, d))


def unpack_nested_stream(data: bytes, n: int, q: int, k: int, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_nested_stream`: ``(codes uint8 (n, d), beta_idx uint8 (n,))``."""
    digits = unpack_mixed_radix(data, nested_stream_radices(n, q, k, d))
    return digits[: n * d].view(n, d).to(torch.uint8), digits[n * d :].to(torch.uint8)
