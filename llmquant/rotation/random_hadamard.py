"""Random Hadamard rotations ``Q = diag(s) H_n`` with seeded signs, as a serialisable nn.Module.

``s in {-1, +1}^n`` is drawn from ``torch.Generator().manual_seed(seed)`` (``seed=None``: all +1, the
plain Hadamard).  ``Q`` is orthogonal, and in row-vector convention

    apply(x)           = x @ Q   = fwht(x * s)
    apply_transpose(x) = x @ Q^T = fwht(x, transpose=True) * s

so ``apply_transpose(apply(x)) == x`` up to rounding.  The signs are a (persistent) buffer, so an
online rotation inside a model is kept by ``state_dict``; ``state()`` / ``from_state`` carry (n, seed).

``backend`` (a plain attribute, not in the state dict; default ``"reference"``) chooses how the
transform runs: ``"reference"`` is :func:`~llmquant.rotation.fwht.fwht`; ``"triton"`` / ``"auto"`` ask
``llmquant.kernels.dispatch.try_hadamard`` for the fast Hadamard kernel (CUDA; with ``"triton"`` also
the CPU interpreter) and fall back to ``fwht`` when it returns None.  Set it for a whole model with
:func:`llmquant.quant.set_backend`.
"""

from __future__ import annotations

import torch
from torch import nn

from llmquant.rotation.constructions import split_order
from llmquant.rotation.fwht import fwht, hadamard_matrix


def random_signs(n: int, seed: int | None) -> torch.Tensor:
    """+-1 float64 vector of length n from ``torch.Generator().manual_seed(seed)``; all ones if seed is None."""
    if seed is None:
        return torch.ones(n, dtype=torch.float64)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1


def random_hadamard(n: int, seed: int | None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The matrix ``Q = diag(s) H_n`` [n, n] (orthogonal) with signs from :func:`random_signs`."""
    return (random_signs(n, seed)[:, None] * hadamard_matrix(n, torch.float64)).to(dtype)


class HadamardRotation(nn.Module):
    """``x -> x @ Q`` along the last dim with ``Q = diag(s) H_n`` (see module docstring).

    ``forward`` is ``apply``.  Works for any leading shape and floating dtype; the signs are cast to the
    input's dtype/device per call, so the module can stay in fp32 while the model runs in another dtype.
    """

    def __init__(self, n: int, seed: int | None = 0, backend: str = "reference"):
        super().__init__()
        split_order(n)  # fail now, with the construction error, rather than at the first forward
        self.n = int(n)
        self.seed = None if seed is None else int(seed)
        self.register_buffer("signs", random_signs(self.n, self.seed).to(torch.float32), persistent=True)
        self.backend = backend

    @property
    def backend(self) -> str:
        """``"reference"`` | ``"triton"`` | ``"native"`` (= reference here) | ``"auto"`` (see module docstring); not saved in the state dict."""
        return getattr(self, "_backend", "reference")  # modules pickled before the attribute existed

    @backend.setter
    def backend(self, value: str) -> None:
        from llmquant.config.schema import BACKENDS

        if value not in BACKENDS:
            raise ValueError(f"HadamardRotation: backend {value!r} must be one of {BACKENDS}")
        self._backend = value

    def _kernel(self, x: torch.Tensor, transpose: bool) -> torch.Tensor | None:
        if self.backend in ("reference", "native"):
            return None
        try:
            from llmquant.kernels.dispatch import try_hadamard
        except ModuleNotFoundError as exc:
            if exc.name not in ("llmquant.kernels", "llmquant.kernels.dispatch", "triton"):
                raise
            return None
        return try_hadamard(self, x, transpose=transpose)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.n:
            raise ValueError(f"HadamardRotation(n={self.n}) got last dim {x.shape[-1]}; shape {tuple(x.shape)}")

    def apply(self, x):
        # nn.Module.apply(fn) recurses into children (model.apply(init_fn) reaches this module), so a
        # callable argument keeps the nn.Module meaning.
        if not isinstance(x, torch.Tensor):
            return super().apply(x)
        self._check(x)
        y = self._kernel(x, transpose=False)
        if y is not None:
            return y
        return fwht(x * self.signs.to(dtype=x.dtype, device=x.device))

    def apply_transpose(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        y = self._kernel(x, transpose=True)
        if y is not None:
            return y
        return fwht(x, transpose=True) * self.signs.to(dtype=x.dtype, device=x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x)

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``Q`` as a dense [n, n] tensor."""
        return random_hadamard(self.n, self.seed, dtype)

    def state(self) -> dict:
        return {"n": self.n, "seed": self.seed}

    @classmethod
    def from_state(cls, state: dict) -> HadamardRotation:
        return cls(int(state["n"]), state["seed"])

    def extra_repr(self) -> str:
        return f"n={self.n}, seed={self.seed}, backend={self.backend}"
