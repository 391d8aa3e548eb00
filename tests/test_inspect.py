"""``llmquant inspect``: outlier measures, calibration helper and the CLI."""

import json

import pytest
import torch

from llmquant.cli import build_parser, main
from llmquant.commands.inspect import inspect_model
from llmquant.models import tiny_random_model
from llmquant.models.calib import calibration_ids
from llmquant.models.outliers import kurtosis, weight_max_over_rms


class CharTokenizer:
    """Byte-level stand-in with the ``tokenizer(text, add_special_tokens=False)`` interface."""

    def __call__(self, text, add_special_tokens=False, **kwargs):
        return {"input_ids": [b % 128 for b in text.encode("utf-8")]}


def test_kurtosis_definition():
    g = torch.Generator().manual_seed(0)
    assert abs(kurtosis(torch.randn(200_000, generator=g, dtype=torch.float64)) - 3.0) < 0.05
    assert abs(kurtosis(torch.tensor([-1.0, 1.0] * 10)) - 1.0) < 1e-12
    spiky = torch.zeros(1000)
    spiky[0] = 1.0
    assert kurtosis(spiky) > 900


def test_calibration_falls_back_to_random_ids(monkeypatch):
    monkeypatch.delenv("LLMQUANT_DATA_DIR", raising=False)
    ids, source = calibration_ids(None, 3, 10, seed=1, vocab_size=50)
    assert ids.shape == (3, 10) and int(ids.max()) < 50 and "random" in source
    ids2, _ = calibration_ids(None, 3, 10, seed=1, vocab_size=50)
    assert torch.equal(ids, ids2)


def test_calibration_reads_wikitext(data_dir):
    ids, source = calibration_ids(CharTokenizer(), 2, 64, seed=0, data_dir=data_dir)
    assert ids.shape == (2, 64) and "wikitext2" in source
    text = (data_dir / "wikitext-2-raw" / "wiki.train.raw").read_text(encoding="utf-8")
    flat = CharTokenizer()(text)["input_ids"]
    first = ids[0].tolist()
    assert any(flat[i: i + 64] == first for i in range(len(flat) - 63))


def test_calibration_bad_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        calibration_ids(None, 1, 4, 0, data_dir=tmp_path / "missing", vocab_size=8)


def test_inspect_tiny_model_report(monkeypatch):
    monkeypatch.delenv("LLMQUANT_DATA_DIR", raising=False)
    model = tiny_random_model("gemma3", seed=3, dtype=torch.float64)
    before = weight_max_over_rms(model)
    report = inspect_model(model, None, rotation="hadamard", seed=1, n_samples=2, seq_len=16)
    assert report["relative_logit_error"] <= 1e-6
    assert report["weights"]["max_over_rms_before"] == before
    assert report["weights"]["after"] == weight_max_over_rms(model) > 0
    a = report["activations"]
    assert set(a["per_role_before"]) == {"q", "o", "gate", "down"}
    assert a["kurtosis_before"] > 1 and a["kurtosis_after"] > 1
    assert "random" in report["calibration"]["source"]
    assert report["rotation"]["model_type"] == "gemma3_text"
    json.dumps(report)  # JSON-serialisable


def test_inspect_is_registered_in_cli():
    args = build_parser().parse_args(["inspect", "some-model", "--rotation", "none", "--json"])
    assert args.model == "some-model" and args.rotation == "none" and args.json and callable(args.func)


def test_inspect_cli_on_local_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLMQUANT_DATA_DIR", raising=False)
    tiny_random_model("llama", seed=4).save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path), "--rotation", "hadamard", "--json", "--n-samples", "2",
                 "--seq-len", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["relative_logit_error"] < 1e-5  # fp32 model
    assert {"max_over_rms_before", "after"} <= set(report["weights"])
    assert {"kurtosis_before", "kurtosis_after"} <= set(report["activations"])
    assert main(["inspect", str(tmp_path), "--rotation", "none", "--n-samples", "1", "--seq-len", "4"]) == 0
    assert "activation kurtosis" in capsys.readouterr().out


@pytest.mark.slow
def test_inspect_smollm2_rotation_lowers_outliers(data_dir, capsys):
    assert main(["inspect", "smollm2-135m", "--rotation", "hadamard", "--json", "--n-samples", "2",
                 "--seq-len", "64", "--data-dir", str(data_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "wikitext2" in report["calibration"]["source"]
    assert report["relative_logit_error"] <= 1e-3
    assert report["weights"]["after"] < report["weights"]["max_over_rms_before"]
    assert report["activations"]["kurtosis_after"] < report["activations"]["kurtosis_before"]
