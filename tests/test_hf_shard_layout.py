"""The packed layouts are shard-friendly (docs/vllm.md): a slice of rows (N, column-parallel) or of whole
8-vectors / groups (K, row-parallel) of the stored tensors is itself a valid module whose weight is exactly the
same slice of the full weight.  Row n's codes live in row n of every packed tensor (no cross-row packing) and
every scale is per row (or per row and K-group)."""

from __future__ import annotations

import pytest
import torch

from llmquant.config import config_from_dict
from llmquant.quant.weights import empty_like_spec, module_spec, quantize_linear

N, K = 24, 96  # 12 8-vectors per row


def _layer(over):
    cfg = config_from_dict({"version": 1, "name": "shard", "weights": {"method": "lattice", "algorithm": "rtn"}}, over)
    lin = torch.nn.Linear(K, N, bias=True)
    torch.manual_seed(0)
    torch.nn.init.normal_(lin.weight)
    layer, _ = quantize_linear(lin, None, cfg.weights)
    return layer


# (overrides, tensors cut along N, tensors cut along K -> int32/uint8 columns per 8-vector, K granularity in 8-vectors)
CASES = {
    "voronoi": ([], {"codes": 1, "beta_idx": 1}, 1),
    "box-b3": (["weights.code=box", "weights.box_bits=3"], {"words": 1}, 1),  # 32-bit word per 8-vector
    "box-b2": (["weights.code=box", "weights.box_bits=2"], {"words": 3 / 4}, 4),  # 24 bits: 4 vectors = 3 int32
    "box-b1": (["weights.code=box", "weights.box_bits=1"], {"words": 1 / 2}, 2),  # 16 bits: 2 vectors = 1 int32
    "scalar-g32": (["weights.method=scalar", "weights.bits=4", "weights.group_size=32"],
                   {"qweight": 4, "scale": 1 / 4, "zero": 1 / 4}, 4),  # 2 codes per byte, one group = 4 vectors
}


def _shard(layer, rows, vecs, per_vec):
    """State dict of the shard rows x 8-vectors ``vecs`` (a range) and its module spec."""
    spec = dict(module_spec(layer), out_features=len(rows), in_features=8 * len(vecs))
    sd = {}
    for name, t in layer.state_dict().items():
        if name == "betas":
            sd[name] = t  # one table per layer, replicated
            continue
        t = t[rows.start:rows.stop]  # every other tensor is per row: cut along N
        if name in per_vec:
            f = per_vec[name]
            t = t[:, int(vecs.start * f):int(vecs.stop * f)]
        sd[name] = t
    return spec, sd


@pytest.mark.parametrize("case", list(CASES))
def test_row_and_column_shards_decode_to_the_weight_slices(case):
    over, per_vec, gran = CASES[case]
    layer = _layer(over)
    w = layer.dequantized_weight()
    nv = K // 8
    for rows, vecs in [(range(N // 2), range(nv)), (range(N // 2, N), range(nv)),  # N split (TP=2)
                       (range(N), range(nv // 2)), (range(N), range(nv // 2, nv)),  # K split (TP=2)
                       (range(5, 17), range(gran, nv - gran))]:
        if vecs.start % gran or vecs.stop % gran:
            continue
        spec, sd = _shard(layer, rows, vecs, per_vec)
        part = empty_like_spec(spec)
        part.load_state_dict(sd, strict=True)
        got = part.dequantized_weight()
        assert torch.equal(got, w[rows.start:rows.stop, 8 * vecs.start:8 * vecs.stop]), (case, rows, vecs)
