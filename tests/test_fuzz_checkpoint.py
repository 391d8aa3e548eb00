"""Fuzzing checkpoints: truncated, bit-flipped, overwritten and partially deleted checkpoint folders.

With the sha256 manifest every damage either leaves the logits exactly as saved (results.json, the
marker) or fails with a user-facing error (one line in the CLI).  For checkpoints written before the
manifest existed the tensors themselves are checked: a damaged ``model.safetensors`` fails cleanly, or
loads with every code / beta index in range and finite floats, and runs.  Never a traceback or a hang."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from _safety_support import logits, make_checkpoint, no_hang, strip_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmquant import api
from llmquant.cli import user_error_message
from llmquant.quant.checkpoint import validate_loaded_values

FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, out = make_checkpoint(tmp_path_factory.mktemp("fz") / "ckpt")
    legacy = tmp_path_factory.mktemp("fz") / "legacy"
    shutil.copytree(out, legacy)
    strip_manifest(legacy)
    return out, legacy, logits(model)


damage = st.tuples(
    st.sampled_from(["flip", "truncate", "delete", "overwrite", "zero"]),
    st.integers(0, 10**9),  # which file (modulo the number of files)
    st.floats(0.0, 1.0),  # where in the file
    st.integers(0, 7),  # which bit
)


def _apply(folder: Path, ops, only: str | None = None) -> None:
    for kind, which, where, bit in ops:
        files = sorted(p for p in folder.iterdir() if p.is_file() and (only is None or p.name == only))
        if not files:
            return
        f = files[which % len(files)]
        data = bytearray(f.read_bytes())
        pos = min(int(where * len(data)), max(len(data) - 1, 0))
        if kind == "delete":
            f.unlink()
            continue
        if kind == "flip" and data:
            data[pos] ^= 1 << bit
        elif kind == "truncate":
            del data[pos:]
        elif kind == "overwrite" and data:
            data[pos:pos + 8] = bytes([(bit * 37 + i) % 256 for i in range(len(data[pos:pos + 8]))])
        elif kind == "zero":
            data[pos:] = bytes(len(data) - pos)
        f.write_bytes(bytes(data))


def _load(folder: Path):
    with no_hang(60):
        try:
            model, _ = api.load(folder, device="cpu")
        except Exception as exc:  # noqa: BLE001 - the property: only user-facing errors
            assert user_error_message(exc) is not None, f"not a clean error: {exc!r}"
            return None
    return model


@FUZZ
@given(st.lists(damage, min_size=1, max_size=3))
def test_damaged_checkpoint_gives_a_clean_error_or_the_saved_logits(saved, ops):
    out, _, ref = saved
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(out, folder)
        _apply(folder, ops)
        model = _load(folder)
        if model is not None:
            assert torch.equal(logits(model), ref)


@FUZZ
@given(st.lists(damage.filter(lambda d: d[0] != "delete"), min_size=1, max_size=3))
def test_damaged_legacy_weights_fail_cleanly_or_load_validated(saved, ops):
    _, legacy, _ = saved
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(legacy, folder)
        _apply(folder, ops, only="model.safetensors")
        model = _load(folder)
        if model is not None:
            validate_loaded_values(model, folder)  # indices in range, floats finite: what kernels rely on
            with no_hang(60):
                assert logits(model).shape == (1, 12, 128)


def test_every_single_file_deletion_and_truncation_is_clean(saved, tmp_path):
    out, _, ref = saved
    for i, name in enumerate(sorted(p.name for p in out.iterdir())):
        for kind in ("delete", "truncate"):
            folder = tmp_path / f"{kind}-{i}"
            shutil.copytree(out, folder)
            (folder / name).unlink() if kind == "delete" else (folder / name).write_bytes(b"")
            model = _load(folder)
            if name in ("results.json", ".llmquant", "README.md"):
                assert model is not None and torch.equal(logits(model), ref)  # not needed to load
            else:
                assert model is None, f"{kind} {name} loaded"
