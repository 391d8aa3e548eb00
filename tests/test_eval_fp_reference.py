"""``llmquant eval`` merges a new perplexity with the FP reference only when both used the same protocol."""

from __future__ import annotations

import json

import pytest


def _details(tokens, context=2048):
    return {"ppl": 1.0, "tokens": tokens, "context": context}


@pytest.mark.parametrize("stored_fp_details", [True, False])
def test_fp_reference_kept_only_for_the_same_protocol(tmp_path, stored_fp_details):
    from llmquant.commands.eval import _with_fp_reference

    old = {"ppl": {"wikitext2": 24.5}, "ppl_details": {"wikitext2": _details(16384)},
           "fp_ppl": {"wikitext2": 23.4}, "delta_ppl": {"wikitext2": 1.1}}
    if stored_fp_details:
        old["fp_ppl_details"] = {"wikitext2": {"tokens": 16384, "context": 2048}}
    (tmp_path / "results.json").write_text(json.dumps(old))
    longer = {"ppl": {"wikitext2": 29.3}, "ppl_details": {"wikitext2": _details(65536)}}
    out = _with_fp_reference(tmp_path, longer)
    assert out["fp_ppl"] == {"wikitext2": None} and out["delta_ppl"] == {"wikitext2": None}
    same = {"ppl": {"wikitext2": 24.0}, "ppl_details": {"wikitext2": _details(16384)}}
    out = _with_fp_reference(tmp_path, same)
    assert out["fp_ppl"] == {"wikitext2": 23.4}
    assert out["delta_ppl"]["wikitext2"] == pytest.approx(0.6)
    other_context = {"ppl": {"wikitext2": 24.0}, "ppl_details": {"wikitext2": _details(16384, context=1024)}}
    assert _with_fp_reference(tmp_path, other_context)["fp_ppl"] == {"wikitext2": None}
