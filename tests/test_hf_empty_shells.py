"""Packed shells without zero fill: ``from_pretrained`` and ``llmquant.api.load`` build the quantized linears'
tensors on the meta device (``install_quantized_structure(..., meta_shells=True)``), and every one of them is then
overwritten by the checkpoint's tensor: shells filled with a sentinel never survive a load, the logits equal
``api.load``'s, and a checkpoint missing a shell tensor is a ``CheckpointError`` instead of an uninitialised
tensor (:func:`llmquant.quant.checkpoint.check_shells_loaded`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import llmquant  # noqa: F401  (registers the quantizer)
from llmquant import api
from llmquant.config import load_config
from llmquant.quant import checkpoint as ckpt_mod
from llmquant.quant.checkpoint import CheckpointError, shell_tensors

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"
FAST = ["calibration.n_samples=2", "calibration.seq_len=16", "weights.algorithm=rtn"]
CASES = {
    # box-code weights, activations and KV (codec objects with plain tensors no state dict restores)
    "box-w4a4kv4": ["weights.code=box", "activations.code=box", "activations.box_variant=int", "kv.code=box",
                    "kv.box_variant=int"],
    # E8 Voronoi layout (codes, beta_idx, betas, row_scale), online down_proj rotation
    "voronoi-w4a4kv4": [],
    # ScalarLinear (qweight, scale, zero), no rotation: tied embeddings
    "scalar-w4": ["rotation.enabled=false", "weights.method=scalar", "activations.method=none", "kv.method=none"],
}
SENTINEL = 0xA5  # every byte of a sentinel-filled shell tensor


def _ids(vocab=256, n=2, t=24):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(0))


def _from_pretrained(path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), **kw).eval()


@pytest.fixture(scope="module", params=sorted(CASES))
def ckpt(request, tmp_path_factory):
    cfg = load_config(TINY, [*FAST, *CASES[request.param]])
    out = tmp_path_factory.mktemp(request.param) / "ckpt"
    api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    return out


def _all_sentinel(t: torch.Tensor) -> bool:
    return t.numel() > 0 and bool((t.detach().cpu().contiguous().view(torch.uint8) == SENTINEL).all())


@pytest.fixture
def sentinel_shells(monkeypatch):
    """Shells built real and every byte set to :data:`SENTINEL` (instead of meta); returns the list of them."""
    made = []
    original = ckpt_mod.empty_quantized_module

    def filled(spec):
        module = original(spec)
        assert all(t.is_meta for t in module.buffers())  # no memory, no zero fill
        module.to_empty(device="cpu")
        for t in module.buffers():
            t.view(torch.uint8).fill_(SENTINEL)
            made.append(t)
        return module

    monkeypatch.setattr(ckpt_mod, "empty_quantized_module", filled)
    return made


def _check_no_sentinel_left(model, made):
    assert made, "no shell was built"
    tensors = [*model.parameters(), *model.buffers()]
    assert not [n for n, t in [*model.named_parameters(), *model.named_buffers()] if _all_sentinel(t)]
    shells = shell_tensors(model)
    assert shells and not any(t.is_meta for t in shells.values())
    return tensors


@torch.no_grad()
def test_shells_are_meta_and_structure_unchanged(ckpt):
    """``meta_shells=True`` builds the same state dict (names, dtypes, shapes) as the zero-filled build, with every
    quantized linear's own tensor on meta and everything else (codec tables, quantizers) real."""
    from transformers import AutoConfig

    from llmquant.config import config_from_dict
    from llmquant.quant.materialize import empty_model

    meta = ckpt_mod.read_meta(ckpt)
    cfg = config_from_dict(meta["config"])
    built = {}
    for meta_shells in (False, True):
        model = empty_model(AutoConfig.from_pretrained(str(ckpt)), torch.float32)
        ckpt_mod.install_quantized_structure(model, cfg, meta["rotation_plan"], meta["quantized"], ckpt,
                                             meta_shells=meta_shells)
        built[meta_shells] = model
    zero, empty = (m.state_dict(keep_vars=True) for m in (built[False], built[True]))
    assert {k: (t.dtype, t.shape) for k, t in zero.items()} == {k: (t.dtype, t.shape) for k, t in empty.items()}
    shells = shell_tensors(built[True])
    assert shells and all(t.is_meta for t in shells.values())
    assert not any(shell_tensors(built[False])[n].is_meta for n in shells)
    assert not [n for n, t in empty.items() if t.is_meta and n not in shells and not zero[n].is_meta]
    for m in built[True].modules():
        codec = getattr(m, "codec", None)
        for v in vars(codec).values() if codec is not None and hasattr(codec, "__dict__") else ():
            assert not (isinstance(v, torch.Tensor) and v.is_meta)  # codec tables are real


@torch.no_grad()
def test_from_pretrained_shells_meta_then_loaded(ckpt, monkeypatch):
    """transformers sees meta shells before loading and real ones after; logits equal api.load's."""
    from llmquant.hf.quantizer import LlmquantHfQuantizer

    seen = []
    before = LlmquantHfQuantizer._process_model_before_weight_loading

    def spy(self, model, **kw):
        out = before(self, model, **kw)
        seen.append(all(t.is_meta for t in shell_tensors(model).values()) and bool(shell_tensors(model)))
        return out

    monkeypatch.setattr(LlmquantHfQuantizer, "_process_model_before_weight_loading", spy)
    model = _from_pretrained(ckpt)
    assert seen == [True]
    ref, _ = api.load(ckpt, device="cpu")
    ids = _ids()
    assert torch.equal(model(ids).logits, ref(ids).logits)
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@torch.no_grad()
def test_no_sentinel_survives_from_pretrained(ckpt, sentinel_shells):
    model = _from_pretrained(ckpt)
    tensors = _check_no_sentinel_left(model, sentinel_shells)
    # transformers assigns new tensors: none of the sentinel storages is still held
    made = {t.untyped_storage().data_ptr() for t in sentinel_shells if t.numel()}
    assert not [t for t in tensors if t.numel() and t.untyped_storage().data_ptr() in made]
    ref, _ = api.load(ckpt, device="cpu")
    ids = _ids()
    assert torch.equal(model(ids).logits, ref(ids).logits)


@torch.no_grad()
def test_no_sentinel_survives_api_load(ckpt, sentinel_shells):
    model, _ = api.load(ckpt, device="cpu")  # read in place into the (real) sentinel shells
    _check_no_sentinel_left(model, sentinel_shells)


@pytest.mark.parametrize("leaf", ["scale", "packed"])
def test_missing_shell_tensor_is_a_checkpoint_error(ckpt, tmp_path, leaf):
    """A shell tensor absent from the weights file would be left uninitialised by transformers: refused."""
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    state = load_file(str(bad / "model.safetensors"))
    q = "model.layers.1.self_attn.q_proj."
    name = next(q + b for b in (("row_scale", "scale") if leaf == "scale" else ("words", "codes", "qweight"))
                if q + b in state)
    state.pop(name)
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"{name}.*not in the weights files"):
        _from_pretrained(bad)
