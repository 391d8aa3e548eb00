"""``llmquant bench decode`` on CPU (tiny shape) and the CUDA kernel benchmark's rows under the interpreter."""

from __future__ import annotations

import json

import pytest


def test_bench_decode_tiny_cpu(capsys):
    from llmquant.cli import main

    rc = main(["bench", "decode", "--shape", "tiny", "--json", "--config", "configs/smollm2-135m-e8-w4a16.yaml",
               "--set", "weights.algorithm=rtn", "--set", "calibration.seq_len=16", "--prompt-tokens", "8",
               "--new-tokens", "3", "--repeats", "1", "--calib-samples", "1", "--device", "cpu"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    fp, q = report["rows"]
    assert report["device"] == "cpu" and report["shape"] == "tiny"
    assert fp["model"] == "fp" and q["model"] == "smollm2-135m-e8-w4a16" and q["backend"] == "reference"
    for r in (fp, q):
        assert r["decode_tokens_per_s"] > 0 and r["prefill_ms"] > 0
    # the box code stores ~4 bits per decoder weight; the tiny model's fp32 embeddings stay
    assert q["weight_bytes"] < fp["weight_bytes"]
    assert q["weight_bytes_vs_fp"] == pytest.approx(q["weight_bytes"] / fp["weight_bytes"], abs=1e-4)
    assert 3.9 < q["bits"]["weights"] < 4.6
    assert q["speedup_vs_fp16"] == pytest.approx(q["decode_tokens_per_s"] / fp["decode_tokens_per_s"], rel=1e-2)
    assert q["kernel_fallbacks"] == []  # reference backend: the dispatcher is never asked


@pytest.mark.parametrize("flag", ["--new-tokens", "--batch"])
def test_bench_decode_rejects_bad_counts(capsys, flag):
    from llmquant.cli import main

    assert main(["bench", "decode", "--shape", "tiny", flag, "0", "--device", "cpu"]) == 2
    assert flag in capsys.readouterr().out


@pytest.mark.kernels
def test_bench_cuda_rows_under_interpreter():
    """Every kernel the GPU benchmark times runs (interpreter, trivial timer) and yields its row."""
    from tests._kernels_support import kernel_device

    dev = kernel_device()
    from llmquant.kernels.bench import W4A4_VARIANTS, bench_cuda

    seen = []
    rows = bench_cuda([(64, 16)], [2], 14, 2, 0, timer=lambda f: (f(), 2.0)[1], device=str(dev), on_row=seen.append)
    assert rows == seen
    configs = [(r["kernel"], r["config"]) for r in rows]
    assert configs == [("w4a16", "box b=3 lattice"), ("w4a16", "box b=3 table"), ("w4a16", "box b=3 beta_tables"),
                       ("w4a16", "voronoi q=14 k=2")] + [
        ("w4a4", f"box {a}/{w}") for a, w in W4A4_VARIANTS]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["torch_bf16_us"] / r["time_us"], rel=1e-3)


def test_static_cache_decode_equals_dynamic_cache_on_cpu():
    """The graph benchmark's static-cache step (run eagerly on CPU: the same warm-up, rewind and feedback as the
    captured graph) gives the greedy tokens of the dynamic-cache decode, FP and box W4A16 alike."""
    import torch

    from eval.decode_speed import measure_static, random_model
    from llmquant.api import quantize
    from llmquant.config import load_config
    from llmquant.quant.kv_cache import make_cache

    def dynamic_tokens(model, prompt, n):
        cache, toks = make_cache(model, 1), []
        nxt = model(prompt, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(n - 1):
            nxt = model(nxt, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
            toks.append(nxt)
        return torch.cat(toks, 1)

    prompt = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(1))
    fp = random_model("tiny", 0, "cpu")
    q = random_model("tiny", 0, "cpu")
    cfg = load_config("configs/smollm2-135m-e8-w4a16.yaml", ["weights.algorithm=rtn", "calibration.seq_len=16"])
    quantize(q, cfg, calib=torch.randint(3, 128, (1, 16)), progress=False, log=lambda *a, **k: None)
    with torch.no_grad():
        for model in (fp, q):
            res = measure_static(model, prompt, 6, 2, graph=False)
            assert res["tokens"].shape == (1, 5) and res["decode_tokens_per_s"] > 0
            assert torch.equal(res["tokens"], dynamic_tokens(model, prompt, 6))


def test_set_cache_length_rewinds_static_cache():
    import torch
    import transformers

    from eval.decode_speed import set_cache_length

    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, vocab_size=64)
    cache = transformers.StaticCache(config=cfg, max_cache_len=8)
    k = torch.zeros(1, 1, 3, 16)
    for layer in range(2):
        cache.update(k, k, layer)
    assert int(cache.get_seq_length()) == 3
    set_cache_length(cache, 1)
    assert int(cache.get_seq_length()) == 1
    with pytest.raises(RuntimeError, match="cumulative_length"):
        set_cache_length(object(), 1)


def test_bench_decode_cuda_graph_needs_cuda(capsys):
    from llmquant.cli import main

    assert main(["bench", "decode", "--shape", "tiny", "--cuda-graph", "--device", "cpu"]) == 2
    assert "--cuda-graph needs a CUDA device" in capsys.readouterr().out


@pytest.mark.kernels
def test_bench_cuda_kernel_groups_filter_rows():
    from tests._kernels_support import kernel_device

    dev = kernel_device()
    from llmquant.kernels.bench import bench_cuda

    rows = bench_cuda([(64, 16)], [1], 14, 2, 0, timer=lambda f: (f(), 2.0)[1], device=str(dev),
                      kernels=("box-w4a16",))
    assert [r["config"] for r in rows] == ["box b=3 lattice", "box b=3 table", "box b=3 beta_tables"]
