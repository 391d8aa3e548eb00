"""Backend selection end to end: config key, ``set_backend``, ``load(backend=)``, the online Hadamards through
the Triton kernel, and ``--backend`` on the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmquant import api
from llmquant.config import ConfigError, config_from_dict, config_hash, load_config
from llmquant.quant import set_backend
from llmquant.quant.linear import LatticeLinear
from llmquant.rotation.random_hadamard import HadamardRotation

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
# rotated (online down_proj + Q/K Hadamards) E8 W4A16, tiny-random-llama: seconds on a CPU
W4A16 = ["model.spec=tiny-random-llama", "activations.method=none", "kv.method=none", "calibration.n_samples=4",
         "calibration.seq_len=32", "calibration.batch_size=4"]


def test_config_backend_key_default_and_validation():
    cfg = load_config(TINY)
    assert cfg.model.backend == "auto" and cfg.model.offload is False
    for value in ("reference", "triton", "auto"):
        assert load_config(TINY, [f"model.backend={value}"]).model.backend == value
    with pytest.raises(ConfigError, match=r"model\.backend: 'cuda' is not one of reference, triton, native, auto"):
        load_config(TINY, ["model.backend=cuda"])
    with pytest.raises(ConfigError, match=r"model\.offload: expected true or false"):
        config_from_dict({"version": 1, "model": {"offload": "yes"}})


def test_backend_and_offload_do_not_change_the_config_hash():
    base = config_hash(load_config(TINY))
    assert config_hash(load_config(TINY, ["model.backend=reference", "model.offload=true"])) == base
    assert config_hash(load_config(TINY, ["model.seed=1"])) != base


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(TINY, W4A16)
    out = tmp_path_factory.mktemp("b") / "ckpt"
    api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    return out


def _count(model):
    lin = [m for m in model.modules() if isinstance(m, LatticeLinear)]
    had = [m for m in model.modules() if isinstance(m, HadamardRotation)]
    return lin, had


def _backends(model) -> set[str]:
    lin, had = _count(model)
    return {m.backend for m in lin + had}


def test_set_backend_reaches_every_lattice_linear_and_hadamard(ckpt):
    model, _ = api.load(ckpt, device="cpu", backend="reference")
    lin, had = _count(model)
    # 2 layers x 7 linears; per layer the online down_proj rotation and the Q/K rotation
    assert len(lin) == 14 and len(had) == 4
    keys = set(model.state_dict())
    assert set_backend(model, "triton") == {"lattice_linear": 14, "hadamard": 4}
    assert all(m.backend == "triton" for m in lin + had)
    assert set(model.state_dict()) == keys  # backend is not state
    assert not any("backend" in k for k in keys)
    with pytest.raises(ValueError, match="backend: 'fast' is not one of"):
        set_backend(model, "fast")
    with pytest.raises(ValueError, match="HadamardRotation: backend 'x'"):
        had[0].backend = "x"


def test_load_backend_argument_and_config_default(ckpt):
    model, _ = api.load(ckpt, device="cpu")  # checkpoint config: model.backend = auto
    lin, had = _count(model)
    assert {m.backend for m in lin + had} == {"auto"}
    model, _ = api.load(ckpt, device="cpu", backend="reference")
    assert _backends(model) == {"reference"}
    with pytest.raises(ValueError, match="backend='gpu'"):
        api.load(ckpt, device="cpu", backend="gpu")


def test_auto_on_cpu_uses_the_reference_hadamard(ckpt, monkeypatch):
    from llmquant.kernels import dispatch

    model, _ = api.load(ckpt, device="cpu", backend="reference")
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        ref = model(ids).logits
        set_backend(model, "auto")
        calls = []
        monkeypatch.setattr(dispatch, "_run_hadamard", lambda *a: calls.append(a) or pytest.fail("kernel on CPU"))
        out = model(ids).logits
    assert not calls and torch.equal(out, ref)


@pytest.mark.kernels
def test_triton_backend_runs_online_hadamards_through_the_kernel(ckpt, monkeypatch):
    from _kernels_support import kernel_device
    from llmquant.kernels import dispatch

    dev = kernel_device()
    model, _ = api.load(ckpt, device=dev, backend="reference")
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 8, 9]], device=dev)
    had_calls, lin_calls = [], []
    real_h, real_f = dispatch._run_hadamard, dispatch._run
    with torch.no_grad():
        ref = model(ids).logits
        set_backend(model, "triton")
        monkeypatch.setattr(dispatch, "_run_hadamard",
                            lambda rot, x, t: had_calls.append((rot.n, tuple(x.shape), t)) or real_h(rot, x, t))
        monkeypatch.setattr(dispatch, "_run", lambda layer, x: lin_calls.append(layer) or real_f(layer, x))
        out = model(ids).logits
    # per layer: down_proj input (n = intermediate) once, Q/K rotation (n = head_dim) on queries and keys
    assert len(had_calls) == 2 * 3
    hc = model.config
    head_dim = getattr(hc, "head_dim", None) or hc.hidden_size // hc.num_attention_heads
    assert sorted({c[0] for c in had_calls}) == sorted({hc.intermediate_size, head_dim})
    assert len(lin_calls) == 14  # every LatticeLinear through the W4A16 kernel as well
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= 1e-4 * scale  # W4A16 fp32 kernels + fp32 (ieee) Hadamard


@pytest.mark.kernels
def test_hadamard_rotation_kernel_matches_reference_both_directions():
    from _kernels_support import kernel_device

    dev = kernel_device()
    rot = HadamardRotation(48, seed=3).to(dev)
    x = torch.randn(5, 48, generator=torch.Generator().manual_seed(0)).to(dev)
    ref, ref_t = rot.apply(x), rot.apply_transpose(x)
    rot.backend = "triton"
    assert torch.allclose(rot.apply(x), ref, atol=5e-6, rtol=0)
    assert torch.allclose(rot.apply_transpose(x), ref_t, atol=5e-6, rtol=0)
    assert torch.allclose(rot.apply_transpose(rot.apply(x)), x, atol=1e-5, rtol=0)


def test_cli_eval_accepts_backend(ckpt, monkeypatch, capsys):
    import llmquant.api as api_mod
    from llmquant.cli import main

    seen = {}
    real = api_mod.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        model, tok = real(*args, **kwargs)
        seen["backends"] = _backends(model)
        return model, tok

    monkeypatch.setattr(api_mod, "load", spy)
    assert main(["eval", str(ckpt), "--ppl", "none", "--backend", "reference", "--device", "cpu", "--json"]) == 0
    assert seen["backend"] == "reference" and seen["backends"] == {"reference"}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["eval", str(ckpt), "--ppl", "none", "--backend", "cuda"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_generate_and_serve_have_backend_option():
    import argparse

    from llmquant.commands import generate, serve

    for mod in (generate, serve):
        p = argparse.ArgumentParser()
        sub = p.add_subparsers()
        mod.register(sub)
        name = mod.__name__.rsplit(".", 1)[1]
        extra = ["--prompt", "hi"] if name == "generate" else []
        args = p.parse_args([name, "m", *extra, "--backend", "triton", "--device-map", "auto",
                             "--max-memory", "0=1GiB,cpu=2GiB"])
        assert args.backend == "triton" and args.device_map == "auto"


def test_parse_max_memory():
    from llmquant.commands.eval import parse_max_memory

    assert parse_max_memory("0=20GiB, cpu=64GiB") == {0: "20GiB", "cpu": "64GiB"}
    assert parse_max_memory(None) is None
    with pytest.raises(ValueError, match="--max-memory: 'cpu' is not DEVICE=SIZE"):
        parse_max_memory("cpu")
