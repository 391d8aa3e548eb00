"""The shipped β sets (``data/beta_sets.json``, produced by :mod:`.beta_search`) and their loader."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

DATA_FILE = Path(__file__).resolve().parent / "data" / "beta_sets.json"

#: JSON key of the sets optimised for each choice rule.
SET_KEYS = {"first_fit": "sets", "min_error": "sets_min_error"}


@functools.lru_cache(maxsize=1)
def _load_table() -> dict:
    if not DATA_FILE.is_file():
        raise FileNotFoundError(f"shipped beta sets not found at {DATA_FILE}: reinstall llmquant or regenerate "
                                f"them with `python -m llmquant.lattice.beta_search --out {DATA_FILE}`")
    return json.loads(DATA_FILE.read_text())


def load_beta_set(name: str, q: int, k: int, choose: str = "first_fit") -> torch.Tensor:
    """Shipped β set (ascending, float32 ``Tensor[k]``) for lattice ``name``, nesting ratio ``q``, k scales,
    optimised for the quantizer's ``choose`` rule ("first_fit" or "min_error")."""
    if choose not in SET_KEYS:
        raise ValueError(f"choose must be one of {sorted(SET_KEYS)}, got {choose!r}")
    sets = _load_table().get(SET_KEYS[choose], {})
    try:
        entry = sets[name][str(int(q))][str(int(k))]
    except KeyError:
        have = sorted((n, int(qq), int(kk)) for n in sets for qq in sets[n] for kk in sets[n][qq])
        raise KeyError(
            f"no shipped beta set for lattice={name!r}, q={q}, k={k}; shipped (lattice, q, k): {have}. "
            f"Run llmquant.lattice.beta_search.search_betas({name!r}, {q}, {k}) to make one"
        ) from None
    return torch.tensor(entry["betas"], dtype=torch.float32)
