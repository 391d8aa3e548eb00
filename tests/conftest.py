"""Test-wide settings: offline hub, bounded threads, and the shared data folder."""

import os
from pathlib import Path

# Never touch the network: a wrong hub id would otherwise retry for ~46 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter.  Triton reads this
# variable when it is first imported (transformers may import it), so it is set here,
# before any test module loads.  The "auto" backend never picks the interpreter; only
# tests that ask for backend="triton" explicitly use it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Two torch processes on two cores slow each other down 10x; let the caller choose.
torch.set_num_threads(int(os.environ.get("LLMQUANT_TEST_THREADS", "2")))


def _data_dir() -> Path | None:
    env = os.environ.get("LLMQUANT_DATA_DIR")
    if env:
        return Path(env)
    guess = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return guess if guess.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline data folder (LLMQUANT_DATA_DIR), or skip when it is absent."""
    d = _data_dir()
    if d is None or not (d / "wikitext-2-raw").is_dir():
        pytest.skip("no offline data folder: set LLMQUANT_DATA_DIR (see README, 'Offline data')")
    return d
