"""A few calibration sequences for ``llmquant inspect`` (WikiText-2 train, or seeded random ids).

Kept minimal on purpose: the general data loader is :mod:`llmquant.data`; this helper only reads
``<data_dir>/wikitext-2-raw/wiki.train.raw`` so that inspect works before/without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

WIKITEXT_TRAIN = Path("wikitext-2-raw") / "wiki.train.raw"


def find_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """``explicit`` if given (must exist), else ``$LLMQUANT_DATA_DIR`` if set and existing, else None."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"--data-dir {p} is not a directory")
        return p
    env = os.environ.get("LLMQUANT_DATA_DIR")
    return Path(env) if env and Path(env).is_dir() else None


def calibration_ids(tokenizer, n_samples: int, seq_len: int, seed: int, data_dir=None, vocab_size=None,
                    max_chars: int = 2_000_000) -> tuple[torch.Tensor, str]:
    """``(ids LongTensor[n_samples, seq_len], source)``.

    With WikiText-2 available: the first ``max_chars`` characters of the train split are tokenized and
    ``n_samples`` windows start at offsets drawn from ``torch.Generator().manual_seed(seed)``.  Otherwise
    (or with ``tokenizer=None``) ids are uniform in ``[0, vocab_size)`` from the same generator, and
    ``source`` says so.
    """
    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"n_samples and seq_len must be >= 1, got {n_samples}, {seq_len}")
    g = torch.Generator().manual_seed(int(seed))
    d = find_data_dir(data_dir)
    path = d / WIKITEXT_TRAIN if d is not None else None
    if tokenizer is not None and path is not None and path.is_file():
        with open(path, encoding="utf-8") as f:
            text = f.read(max_chars)
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        if ids.numel() < seq_len + 1:
            raise ValueError(f"{path} has only {ids.numel()} tokens, fewer than seq_len={seq_len}")
        starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=g)
        return torch.stack([ids[s: s + seq_len] for s in starts.tolist()]), f"wikitext2 train ({path})"
    if vocab_size is None:
        raise ValueError("no WikiText-2 data and no vocab_size for the random-id fallback")
    why = "no tokenizer" if tokenizer is None else (
        f"{path} not found" if path is not None else "no data dir (set LLMQUANT_DATA_DIR or --data-dir)")
    ids = torch.randint(0, int(vocab_size), (n_samples, seq_len), generator=g)
    return ids, f"random token ids ({why}); outlier statistics on random ids are not representative"
