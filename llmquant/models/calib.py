"""Calibration sequences for ``llmquant inspect``: WikiText-2 train windows, or seeded random ids.

The windows come from :func:`llmquant.data.calibration_batch`; this module only adds the fallback
to random token ids, so that ``inspect`` also works on tokenizer-less tiny models or without data.
"""

from __future__ import annotations

from pathlib import Path

import torch

WIKITEXT_TRAIN = Path("wikitext-2-raw") / "wiki.train.raw"


def calibration_ids(tokenizer, n_samples: int, seq_len: int, seed: int, data_dir=None,
                    vocab_size=None) -> tuple[torch.Tensor, str]:
    """``(ids LongTensor[n_samples, seq_len], source)``.

    With a tokenizer and WikiText-2 in the data folder (``data_dir`` or ``$LLMQUANT_DATA_DIR``):
    seeded windows of the train split (:func:`llmquant.data.calibration_batch`).  Otherwise ids are
    uniform in ``[0, vocab_size)`` from ``torch.Generator().manual_seed(seed)``, and ``source`` says so.
    """
    from llmquant.data import calibration_batch, resolve_data_dir

    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"n_samples and seq_len must be >= 1, got {n_samples}, {seq_len}")
    d = resolve_data_dir(data_dir)
    path = d / WIKITEXT_TRAIN if d is not None else None
    if tokenizer is not None and path is not None and path.is_file():
        ids = calibration_batch(tokenizer, n_samples, seq_len, seed, dataset="wikitext2", data_dir=d)
        return ids, f"wikitext2 train ({path})"
    if vocab_size is None:
        raise ValueError("no WikiText-2 data and no vocab_size for the random-id fallback")
    why = "no tokenizer" if tokenizer is None else (
        f"{path} not found" if path is not None else "no data dir (set LLMQUANT_DATA_DIR or --data-dir)")
    g = torch.Generator().manual_seed(int(seed))
    ids = torch.randint(0, int(vocab_size), (n_samples, seq_len), generator=g)
    return ids, f"random token ids ({why}); outlier statistics on random ids are not representative"
