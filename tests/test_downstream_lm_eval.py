"""The local tasks give lm-eval's numbers, and "llmquant" is an lm-eval model type."""

from __future__ import annotations

import os

import pytest
from llmquant.eval.downstream import run_tasks
from llmquant.eval.tiny import byte_tokenizer, tiny_llama

lm_eval = pytest.importorskip("lm_eval")

# (stock yaml, local file, split lm-eval scores)
STOCK = {
    "piqa": ("piqa/piqa.yaml", "piqa/piqa_validation.jsonl", "validation"),
    "arc_easy": ("arc/arc_easy.yaml", "arc/ARC-Easy-test.jsonl", "test"),
    "lambada_openai": ("lambada/lambada_openai.yaml", "lambada_openai/lambada_test.jsonl", "test"),
}


def _stock_task_on_local_file(name, data_dir):
    """lm-eval's own task config, read from its installed yaml, with the dataset swapped for our jsonl."""
    import yaml
    from lm_eval.api.task import ConfigurableTask

    yaml_path, file, split = STOCK[name]
    with open(os.path.join(os.path.dirname(lm_eval.__file__), "tasks", yaml_path)) as fh:
        cfg = yaml.safe_load(fh)
    for key in ("training_split", "validation_split", "test_split", "dataset_name"):
        cfg.pop(key, None)
    cfg.update(
        dataset_path="json",
        dataset_kwargs={"data_files": {split: str(data_dir / "tasks" / file)}},
        **{f"{split}_split": split},
    )
    return ConfigurableTask(config=cfg)


def _evaluate(lm, tasks, limit):
    """lm-eval's evaluator on ready task objects (skips indexing its task library; no bootstrap)."""
    from lm_eval.evaluator import evaluate

    return evaluate(lm=lm, task_dict={t.config.task: t for t in tasks}, limit=limit, bootstrap_iters=0)["results"]


def test_local_tasks_match_lm_eval(data_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny_llama(seed=2), byte_tokenizer()
    limit = 12
    tasks = [_stock_task_on_local_file(n, data_dir) for n in STOCK]
    raw = _evaluate(HFLM(pretrained=model, tokenizer=tok, batch_size=4), tasks, limit)
    ours = run_tasks(model, tok, list(STOCK), limit=limit, batch_size=4, data_dir=data_dir, backend="local")
    for name in ("piqa", "arc_easy"):
        assert ours[name]["acc"] == raw[name]["acc,none"], name
        assert ours[name]["acc_norm"] == raw[name]["acc_norm,none"], name
    assert ours["lambada_openai"]["acc"] == raw["lambada_openai"]["acc,none"]
    # exp of a mean of fp32 log-likelihoods: relative agreement to fp32 precision.
    assert ours["lambada_openai"]["perplexity"] == pytest.approx(raw["lambada_openai"]["perplexity,none"], rel=1e-4)


def test_llmquant_model_type_is_registered(data_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from llmquant.eval.lm_eval_model import register
    from lm_eval.api.registry import get_model

    cls = register()
    assert register() is cls and get_model("llmquant") is cls
    model, tok = tiny_llama(seed=2), byte_tokenizer()
    lm = get_model("llmquant").create_from_arg_obj({"pretrained": model, "tokenizer": tok}, {"batch_size": 2})
    raw = _evaluate(lm, [_stock_task_on_local_file("piqa", data_dir)], 4)
    ours = run_tasks(model, tok, ["piqa"], limit=4, data_dir=data_dir, backend="local")
    assert raw["piqa"]["acc,none"] == ours["piqa"]["acc"]
    with pytest.raises(ValueError, match="path=DIR"):
        cls()


@pytest.mark.slow
def test_lm_eval_cli_with_llmquant_model(data_dir, tmp_path, monkeypatch):
    """lm-eval's own CLI (through our registering wrapper) runs --model llmquant on a local-data task."""
    import subprocess
    import sys

    (tmp_path / "piqa_local.yaml").write_text(
        "task: piqa_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {data_dir / 'tasks' / 'piqa' / 'piqa_validation.jsonl'}\n"
        "output_type: multiple_choice\nvalidation_split: validation\n"
        'doc_to_text: "Question: {{goal}}\\nAnswer:"\ndoc_to_target: label\n'
        'doc_to_choice: "{{[sol1, sol2]}}"\nmetric_list:\n  - metric: acc\n'
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "llmquant.eval.lm_eval_model", "--model", "llmquant", "--model_args",
         "path=tiny-llama", "--tasks", "piqa_local", "--include_path", str(tmp_path), "--limit", "4"],
        capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "piqa_local" in out.stdout and "acc" in out.stdout
