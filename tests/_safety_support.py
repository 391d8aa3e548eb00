"""Helpers shared by the safety and fuzz tests: a tiny checkpoint in a few seconds, a hang guard,
and the CLI run with captured stderr."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import torch

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
#: tiny random Llama, 2 x 16 calibration tokens, lattice (E8) RTN weights: a checkpoint in about a second
FAST = ["model.spec=tiny-random-llama", "calibration.n_samples=2", "calibration.seq_len=16",
        "calibration.batch_size=2", "weights.algorithm=rtn", "activations.method=none", "kv.method=none"]
IDS = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(3))


def tiny_cfg(*extra: str):
    from llmquant.config import load_config

    return load_config(TINY, [*FAST, *extra])


def make_checkpoint(out: Path, *extra: str):
    """Quantize the tiny model with ``extra`` overrides into ``out`` -> (model, out)."""
    from llmquant import api

    model, _, _, out = api.quantize_to_checkpoint(tiny_cfg(*extra), out, progress=False, log=None)
    return model, out


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(IDS).logits


def strip_manifest(ckpt: Path) -> None:
    """Turn ``ckpt`` into a checkpoint as written before the sha256 manifest existed."""
    p = ckpt / "llmquant_config.json"
    meta = json.loads(p.read_text())
    meta.pop("files", None)
    meta.pop("meta_sha256", None)
    p.write_text(json.dumps(meta))


def rewrite_tensors(file: Path, edit) -> None:
    """Load a safetensors file, let ``edit(dict)`` change it in place, write it back (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
    sd = load_file(str(file))
    edit(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(file), metadata=meta)


@contextlib.contextmanager
def no_hang(seconds: int):
    """Fail (TimeoutError) instead of hanging when the block runs longer than ``seconds``."""

    def alarm(_sig, _frame):
        raise TimeoutError(f"no result within {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``llmquant ARGV`` in process -> (exit status, stdout, stderr)."""
    from llmquant.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return int(rc or 0), out, err
