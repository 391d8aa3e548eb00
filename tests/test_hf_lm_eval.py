"""lm-eval's own ``hf`` model scores an llmquant checkpoint offline, exactly like ``--model llmquant``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-llama-e8-w4a4kv4.yaml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data_dir):
    from llmquant import api
    from llmquant.config import load_config

    cfg = load_config(TINY, ["calibration.n_samples=2", "calibration.seq_len=16", "weights.algorithm=rtn"])
    out = tmp_path_factory.mktemp("lm") / "ckpt"
    api.quantize_to_checkpoint(cfg, out, progress=False, log=None)
    return out


def _run(model_type, model_args, out, monkeypatch, data_dir):
    from llmquant.eval.lm_eval_model import main

    monkeypatch.setenv("LLMQUANT_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    main(["--model", model_type, "--model_args", model_args, "--tasks", "piqa", "--limit", "6",
          "--output_path", str(out), "--log_samples"])
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["piqa"]
    samples = [json.loads(line) for line in next(out.rglob("samples_piqa_*.jsonl")).read_text().splitlines()]
    return results, [(s["doc_id"], s["resps"]) for s in sorted(samples, key=lambda s: s["doc_id"])]


def test_hf_model_type_equals_llmquant_model_type(ckpt, tmp_path, monkeypatch, data_dir):
    hf_res, hf_samples = _run("hf", f"pretrained={ckpt}", tmp_path / "hf", monkeypatch, data_dir)
    lq_res, lq_samples = _run("llmquant", f"path={ckpt}", tmp_path / "lq", monkeypatch, data_dir)
    assert len(hf_samples) == 6
    assert hf_samples == lq_samples  # every log-likelihood, bit for bit
    for key in ("acc,none", "acc_norm,none"):
        assert hf_res[key] == lq_res[key]


def test_local_task_yamls_are_lm_evals_with_local_data(tmp_path, data_dir):
    import yaml
    from llmquant.eval.lm_eval_model import STOCK_YAMLS, local_task_dir

    names = local_task_dir(data_dir, tmp_path)
    assert "piqa" in names
    for name in names:
        ours = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
        rel, split = STOCK_YAMLS[name]
        stock = yaml.safe_load((Path(os.path.dirname(lm_eval.__file__)) / "tasks" / rel).read_text())
        assert ours["task"] == name and ours["dataset_path"] == "json"
        assert Path(ours["dataset_kwargs"]["data_files"][split]).is_file()
        assert ours[f"{split}_split"] == split
        for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "output_type"):
            assert ours.get(key) == stock.get(key), (name, key)
