"""User errors reach the terminal as one line ``llmquant: error: ...`` with exit status 2; ``--debug``
or ``LLMQUANT_DEBUG=1`` shows the traceback; bugs keep their traceback."""

from __future__ import annotations

import json

import pytest
from _safety_support import TINY, make_checkpoint, run_cli, strip_manifest

from llmquant.config import ConfigError
from llmquant.quant.checkpoint import CheckpointError

SHIPPED = "configs/smollm2-135m-e8-w4a16.yaml"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.delenv("LLMQUANT_DEBUG", raising=False)


def _one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("llmquant: error: "), err
    return err.rstrip("\n")


def test_common_mistake_1_config_typo(capsys):
    rc, _, err = run_cli(["quantize", SHIPPED, "--set", "weights.lattic=E8"], capsys)
    assert rc == 2
    assert _one_error_line(err) == (f"llmquant: error: {SHIPPED}: weights.lattic: unknown key; "
                                    "did you mean 'lattice'?")


def test_common_mistake_2_missing_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rc, _, err = run_cli(["eval", "tiny-llama", "--data-dir", str(tmp_path), "--max-tokens", "256",
                          "--no-progress"], capsys)
    assert rc == 2
    assert _one_error_line(err) == (
        f"llmquant: error: cannot load wikitext2 split 'test': the data folder {tmp_path} has no "
        "wikitext-2-raw/wiki.test.raw and HF datasets is disabled (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set). "
        "Either set LLMQUANT_DATA_DIR (or pass --data-dir) to a folder containing wikitext-2-raw/wiki.test.raw, "
        "or go online so HF datasets can download it (unset HF_DATASETS_OFFLINE / HF_HUB_OFFLINE).")


def test_common_mistake_3_out_is_an_existing_folder(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    rc, _, err = run_cli(["run", str(TINY), "--out", str(out)], capsys)
    assert rc == 2
    assert _one_error_line(err) == (
        f"llmquant: error: --out {out}: the folder exists and was not written by llmquant (no .llmquant marker); "
        "nothing was changed. Choose another --out, or pass --overwrite to replace it")
    assert (out / "notes.md").read_text() == "mine"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nweights:\n  method: lattice\n   q: 3\n")
    rc, _, err = run_cli(["quantize", str(bad)], capsys)
    assert rc == 2
    assert _one_error_line(err) == f"llmquant: error: {bad}:4:5: YAML syntax error: mapping values are not allowed here"


def test_unknown_model_and_unsupported_architecture(tmp_path, capsys):
    rc, _, err = run_cli(["eval", str(tmp_path / "no-such-model"), "--no-progress"], capsys)
    assert rc == 2 and "is not a directory or a .gguf file" in _one_error_line(err)
    _, ckpt = make_checkpoint(tmp_path / "ckpt")
    strip_manifest(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_cli(["eval", str(ckpt), "--no-progress", "--max-tokens", "64"], capsys)
    assert rc == 2
    line = _one_error_line(err)
    assert "unsupported architecture 'gpt2'; supported: " in line and "llama" in line and "qwen3" in line


def test_corrupt_checkpoint_is_one_line_naming_the_file(tmp_path, capsys):
    _, ckpt = make_checkpoint(tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 16)
    rc, _, err = run_cli(["generate", str(ckpt), "--prompt", "hi", "--device", "cpu"], capsys)
    assert rc == 2
    assert f"{ckpt}/model.safetensors: sha256 does not match the manifest" in _one_error_line(err)


def test_debug_flag_and_environment_show_the_traceback(capsys, monkeypatch):
    typo = ["quantize", SHIPPED, "--set", "weights.lattic=E8"]
    for argv in ([*typo, "--debug"], ["--debug", *typo]):
        with pytest.raises(ConfigError, match="unknown key"):
            run_cli(argv, capsys)
    monkeypatch.setenv("LLMQUANT_DEBUG", "1")
    with pytest.raises(ConfigError, match="unknown key"):
        run_cli(typo, capsys)
    monkeypatch.setenv("LLMQUANT_DEBUG", "0")
    assert run_cli(typo, capsys)[0] == 2


def test_bugs_keep_their_traceback(capsys, monkeypatch):
    from llmquant import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")

    def bug(args):
        raise ZeroDivisionError("a bug, not a user error")

    sub.choices["theory"].set_defaults(func=bug)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    with pytest.raises(ZeroDivisionError):
        cli.main(["theory"])
    assert cli.user_error_message(ZeroDivisionError("x")) is None
    assert cli.user_error_message(CheckpointError("a\n  b")) == "a b"
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    assert cli.user_error_message(oom("CUDA out of memory")).startswith("out of accelerator memory; lower")


def test_usage_errors_are_one_line_too(capsys):
    rc, _, err = run_cli(["quantize"], capsys)
    assert rc == 2
    assert _one_error_line(err) == ("llmquant: error: the following arguments are required: config "
                                    "(see `llmquant quantize --help`)")


def test_user_errors_defined_outside_llmquant_errors_are_recognized():
    from llmquant.eval.report import ReportError
    from llmquant.eval.tasks.base import TaskDataMissing

    from llmquant.cli import user_error_message
    from llmquant.data.text import DataNotFoundError

    for cls in (DataNotFoundError, TaskDataMissing, ReportError, FileNotFoundError):
        assert user_error_message(cls("first\n  second")) == "first second"
    assert user_error_message(ValueError("could be a bug")) is None
