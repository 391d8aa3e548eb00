"""Local task definitions (lm-eval prompts/metrics), lm-eval-style log-likelihood scoring, run_tasks."""

from __future__ import annotations

import math

import pytest
import torch
from llmquant.eval.downstream import parse_task_list, run_tasks
from llmquant.eval.loglik import LoglikScorer
from llmquant.eval.tasks import TASKS, TaskDataMissing, aggregate, get_task
from llmquant.eval.tiny import byte_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0), byte_tokenizer()


def test_piqa_and_arc_prompts():
    piqa = get_task("piqa")
    doc = {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}
    assert piqa.requests(doc) == [
        ("Question: Open a jar\nAnswer:", " twist the lid"),
        ("Question: Open a jar\nAnswer:", " eat the lid"),
    ]
    arc = get_task("arc_challenge")
    doc = {"question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "3"}
    assert arc.requests(doc)[2] == ("Question: Q?\nAnswer:", " c")
    assert arc.target(doc) == 2
    with pytest.raises(ValueError, match="answerKey 'E'"):
        arc.target({**doc, "answerKey": "E"})


def test_lambada_hellaswag_winogrande_prompts():
    lam = get_task("lambada_openai")
    assert lam.requests({"text": "he said  hello to  Bob"}) == [("he said  hello to ", " Bob")]
    hs = get_task("hellaswag")
    raw = {
        "activity_label": "Baking",
        "ctx_a": "A man mixes flour.",
        "ctx_b": "he",
        "endings": ["bakes [header] the bread.", " puts it [title] away"],
        "label": "1",
    }
    doc = hs.process(raw)
    assert doc["query"] == "Baking: A man mixes flour. He"
    assert doc["clean_endings"] == ["bakes the bread.", "puts it. away"]
    assert hs.target(doc) == 1
    wino = get_task("winogrande")
    doc = {"sentence": "The cup fell off the table because _ was slippery.", "option1": "the cup",
           "option2": "the table", "answer": "2"}
    assert wino.requests(doc) == [
        ("The cup fell off the table because the cup", " was slippery."),
        ("The cup fell off the table because the table", " was slippery."),
    ]
    assert wino.text(doc) == 1


def test_scores_and_aggregation():
    piqa = get_task("piqa")
    doc = {"goal": "g", "sol1": "short", "sol2": "much longer answer", "label": 1}
    # Raw sums prefer choice 0; per-character normalisation prefers the long choice 1.
    s = piqa.score(doc, [(-5.0, False), (-6.0, False)])
    assert s == {"acc": 0.0, "acc_norm": 1.0}
    agg = aggregate([{"acc": 1.0}, {"acc": 0.0}, {"acc": 1.0}, {"acc": 1.0}])
    assert agg["acc"] == 0.75 and agg["n"] == 4
    assert agg["acc_stderr"] == pytest.approx(math.sqrt((0.75 * 0.25 * 4 / 3) / 4))
    lam = aggregate([{"acc": 1.0, "perplexity": -1.0}, {"acc": 0.0, "perplexity": -3.0}])
    assert lam["perplexity"] == pytest.approx(math.exp(2.0))


def test_encode_pair_moves_trailing_space(tiny):
    _, tok = tiny
    sc = LoglikScorer(tiny[0], tok)
    ctx, cont = sc.encode_pair("Answer: ", "yes")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " yes"
    ctx, cont = sc.encode_pair("", "yes")
    assert ctx == [tok.bos_token_id] and tok.decode(cont) == "yes"


def test_scorer_matches_manual_loglik_and_is_batch_invariant(tiny):
    model, tok = tiny
    reqs = [("Question: x\nAnswer:", " a long answer here"), ("Hi", " there"), ("abc", "d")]
    single = LoglikScorer(model, tok, batch_size=1).loglikelihood(reqs)
    batched = LoglikScorer(model, tok, batch_size=3).loglikelihood(reqs)
    for (a, ga), (b, gb) in zip(single, batched):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    ids = tok.encode("Hi there")
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    n_ctx = len(tok.encode("Hi"))
    manual = sum(logp[t - 1, ids[t]].item() for t in range(n_ctx, len(ids)))
    assert single[1][0] == pytest.approx(manual, abs=1e-4)


def test_scorer_truncates_from_the_left(tiny):
    model, tok = tiny
    sc = LoglikScorer(model, tok, max_length=16)
    long_ctx = "x" * 40
    (ll, _), = sc.loglikelihood([(long_ctx, " yz")])
    (ll_short, _), = sc.loglikelihood([(long_ctx[-14:], " yz")])
    # Input = last max_length + 1 = 17 tokens minus the final one: 14 context tokens survive.
    assert ll == pytest.approx(ll_short, abs=1e-5)


def test_run_tasks_local_on_offline_data(tiny, data_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tok = tiny
    res = run_tasks(model, tok, "piqa,arc_easy,lambada_openai", limit=6, batch_size=4, data_dir=data_dir)
    assert set(res) == {"piqa", "arc_easy", "lambada_openai"}
    for name in ("piqa", "arc_easy"):
        assert res[name]["n"] == 6
        assert 0.0 <= res[name]["acc"] <= 1.0 and 0.0 <= res[name]["acc_norm"] <= 1.0
        assert all(isinstance(v, (int, float)) for v in res[name].values())
    assert res["lambada_openai"]["perplexity"] > 1.0
    # Same documents, batch size 1: identical metrics.
    again = run_tasks(model, tok, ["piqa"], limit=6, batch_size=1, data_dir=data_dir)
    assert again["piqa"]["acc"] == res["piqa"]["acc"] and again["piqa"]["acc_norm"] == res["piqa"]["acc_norm"]


@pytest.mark.parametrize("name,path", [("hellaswag", "hellaswag/hellaswag_validation.jsonl"),
                                       ("winogrande", "winogrande/winogrande_xl_validation.jsonl")])
def test_missing_task_data_names_task_and_file(tiny, tmp_path, monkeypatch, name, path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TaskDataMissing) as err:
        run_tasks(*tiny, [name], limit=2, data_dir=tmp_path)
    assert repr(name) in str(err.value) and f"tasks/{path}" in str(err.value)


def test_bad_task_arguments(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="unknown task 'mmlu'.*piqa"):
        run_tasks(*tiny, "piqa,mmlu", data_dir=tmp_path)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        run_tasks(*tiny, "piqa", limit=0, data_dir=tmp_path)
    with pytest.raises(ValueError, match="no tasks given"):
        parse_task_list(" , ")
    assert parse_task_list("piqa, arc_easy,piqa") == ["piqa", "arc_easy"]
    assert set(TASKS) == {"piqa", "arc_easy", "arc_challenge", "lambada_openai", "hellaswag", "winogrande"}
