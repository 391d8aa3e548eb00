"""llmquant.quant.heap: free C-heap pages are returned between the layers of a long prefill, not during decode."""

from __future__ import annotations

import platform

import pytest
import torch

from llmquant.quant import heap


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_runs_malloc_trim_on_glibc():
    assert heap.release() is True
    assert heap.release_after(heap.MIN_TOKENS) is True
    assert heap.release_after(heap.MIN_TOKENS - 1) is False


def test_kv_layer_releases_after_long_updates_only(monkeypatch):
    from llmquant.lattice.box import shipped_box_codec
    from llmquant.quant.activations import RowQuantizer
    from llmquant.quant.kv_cache import LatticeKVLayer

    calls = []
    monkeypatch.setattr(heap, "release", lambda: calls.append(1) or True)
    attn = torch.nn.Module()
    attn.llmquant_k_quant = RowQuantizer("box", codec=shipped_box_codec(3, "int"))
    attn.llmquant_v_quant = RowQuantizer("box", codec=shipped_box_codec(3, "int"))
    layer = LatticeKVLayer(attn)
    k = torch.randn(1, 2, heap.MIN_TOKENS, 64)
    layer.update(k, k.clone())
    assert calls == [1]
    layer.update(k[:, :, :1], k[:, :, :1].clone())  # a decode step
    assert calls == [1]
