"""Raw evaluation / calibration text: WikiText-2 and C4, offline folder first, HF ``datasets`` second.

Offline layout (``LLMQUANT_DATA_DIR`` or an explicit ``data_dir``)::

    DATA_DIR/wikitext-2-raw/wiki.{train,valid,test}.raw   WikiText-2 raw, rows joined as-is
    DATA_DIR/c4/*.parquet                                 C4 documents, column ``text``

String conventions (identical offline and online, so perplexities agree):

* WikiText-2: ``"".join(rows)`` of the HF ``wikitext-2-raw-v1`` split.  Every HF row already
  carries its own trailing ``"\\n"`` and empty rows are ``""``, so this equals the ``.raw`` file.
* C4: documents joined with ``"\\n\\n"`` in file order.  ``split="test"`` means the validation
  sample (C4 has no public test split); offline files are picked by the split name in the
  parquet file name (``c4_validation_2k.parquet``); online, the first shard of the split.

Nothing here runs at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

DATASETS = ("wikitext2", "c4")
SPLITS = ("train", "validation", "test")

_WIKI_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}


class DataNotFoundError(FileNotFoundError):
    """The requested text is neither in the data folder nor reachable through HF ``datasets``."""


def resolve_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The offline data folder: ``explicit`` if given, else ``$LLMQUANT_DATA_DIR``, else ``None``.

    An explicit folder that does not exist is an error (a typo should not silently fall back
    to the network); an environment variable pointing nowhere is treated the same way.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(f"data folder {path} does not exist (check --data-dir)")
        return path
    env = os.environ.get("LLMQUANT_DATA_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(
                f"LLMQUANT_DATA_DIR={env} is not a folder; point it at the offline data folder or unset it"
            )
        return path
    return None


def _check(name: str, split: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split == "valid":
        split = "validation"
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


def _offline_path(name: str, split: str, data_dir: Path) -> list[Path]:
    if name == "wikitext2":
        path = data_dir / "wikitext-2-raw" / _WIKI_FILES[split]
        return [path] if path.is_file() else []
    files = sorted((data_dir / "c4").glob("*.parquet"))
    # File names carry the split (e.g. c4_validation_2k.parquet); "test" means validation for C4.
    want = "validation" if split in ("validation", "test") else "train"
    return [f for f in files if want in f.name]


def _read_offline(name: str, files: list[Path]) -> str:
    if name == "wikitext2":
        return files[0].read_text(encoding="utf-8")
    import pyarrow.parquet as pq

    docs: list[str] = []
    for f in files:
        docs.extend(pq.read_table(f, columns=["text"]).column("text").to_pylist())
    return "\n\n".join(docs)


def _online_offline_flag() -> bool:
    return any(os.environ.get(k, "0").lower() in ("1", "true", "yes") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _read_online(name: str, split: str) -> str:
    import datasets

    if name == "wikitext2":
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
        return "".join(ds["text"])
    if split == "train":
        files = {"train": "en/c4-train.00000-of-01024.json.gz"}
    else:
        files = {"validation": "en/c4-validation.00000-of-00008.json.gz"}
        split = "validation"
    ds = datasets.load_dataset("allenai/c4", data_files=files, split=split)
    return "\n\n".join(ds["text"])


def _missing_message(name: str, split: str, data_dir: Path | None, online_error: str | None) -> str:
    expected = (
        f"wikitext-2-raw/{_WIKI_FILES[split]}" if name == "wikitext2" else "c4/c4_validation*.parquet"
    )
    where = f"the data folder {data_dir} has no {expected}" if data_dir else "no data folder is set"
    online = (
        f"HF datasets failed ({online_error})"
        if online_error
        else "HF datasets is disabled (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set)"
    )
    return (
        f"cannot load {name} split {split!r}: {where} and {online}. Either set LLMQUANT_DATA_DIR "
        f"(or pass --data-dir) to a folder containing {expected}, or go online so HF datasets can "
        "download it (unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)."
    )


def load_text(name: str, split: str = "test", data_dir: str | os.PathLike | None = None) -> str:
    """Return the raw text of ``name`` (``"wikitext2"`` or ``"c4"``) for ``split``.

    The offline folder (``data_dir`` or ``$LLMQUANT_DATA_DIR``) wins when it holds the file;
    otherwise HF ``datasets`` is tried unless the hub is marked offline.  Failing both raises
    :class:`DataNotFoundError` naming both ways to provide the data.
    """
    split = _check(name, split)
    folder = resolve_data_dir(data_dir)
    if folder is not None:
        files = _offline_path(name, split, folder)
        if files:
            return _read_offline(name, files)
    online_error = None
    if not _online_offline_flag():
        try:
            return _read_online(name, split)
        except Exception as exc:  # noqa: BLE001 - any download/cache failure means "not available"
            online_error = f"{type(exc).__name__}: {exc}"
    raise DataNotFoundError(_missing_message(name, split, folder, online_error))


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """Tokenize ``text`` once, without special tokens -> LongTensor ``[n_tokens]``.

    No BOS/EOS is inserted: windows are cut from the running token stream, so a special
    token would appear only in the first window and bias it.
    """
    enc = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return torch.tensor(enc["input_ids"], dtype=torch.long)


def calibration_batch(
    tokenizer,
    n_samples: int,
    seq_len: int,
    seed: int,
    dataset: str = "wikitext2",
    data_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """``n_samples`` random windows of ``seq_len`` tokens from the train split -> LongTensor ``[n, seq_len]``.

    Start offsets are drawn uniformly from ``[0, n_tokens - seq_len]`` with a
    ``torch.Generator`` seeded by ``seed`` (the same seed always gives the same batch; the
    global RNG is neither used nor touched).  Windows may overlap.
    """
    if n_samples < 1 or seq_len < 1:
        raise ValueError(f"n_samples and seq_len must be >= 1 (got {n_samples}, {seq_len})")
    ids = tokenize_text(tokenizer, load_text(dataset, "train", data_dir))
    if ids.numel() < seq_len:
        raise ValueError(
            f"{dataset} train split has only {ids.numel()} tokens, fewer than seq_len={seq_len}; "
            "use a shorter seq_len or a larger train file"
        )
    gen = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=gen)
    offsets = torch.arange(seq_len)
    return ids[starts[:, None] + offsets[None, :]]
