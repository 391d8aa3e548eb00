"""Never destroy: ``--out`` must be new, empty, or a folder llmquant wrote; config names stay in runs/."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _safety_support import TINY, logits, make_checkpoint, run_cli, tiny_cfg

from llmquant import api
from llmquant.errors import OutputExistsError
from llmquant.quant.checkpoint import MARKER_FILE, check_output_dir, is_owned


def _foreign(folder: Path) -> Path:
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    return folder


def _no_model_load(monkeypatch):
    """Make sure a refusal happens before any work: loading the model would fail the test."""

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(api, "load_fp", boom)


def test_foreign_folder_is_refused_before_any_work_and_left_untouched(tmp_path, monkeypatch):
    out = _foreign(tmp_path / "mine")
    _no_model_load(monkeypatch)
    with pytest.raises(OutputExistsError, match=r"not written by llmquant.*--overwrite"):
        api.quantize_to_checkpoint(tiny_cfg(), out, progress=False, log=None)
    assert sorted(os.listdir(out)) == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no .work, no temp folders


def test_file_symlink_and_foreign_work_folder_are_refused(tmp_path, monkeypatch):
    _no_model_load(monkeypatch)
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    with pytest.raises(OutputExistsError, match="a file is in the way"):
        api.quantize_to_checkpoint(tiny_cfg(), f, progress=False, log=None)
    assert f.read_text() == "keep"
    target = _foreign(tmp_path / "target")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(OutputExistsError, match="symbolic link"):
        check_output_dir(link)
    assert (target / "thesis.tex").read_text() == "years of work"
    work = _foreign(tmp_path / "new.work")
    with pytest.raises(OutputExistsError, match=r"new\.work.*--overwrite"):
        api.quantize_to_checkpoint(tiny_cfg(), tmp_path / "new", progress=False, log=None)
    assert sorted(os.listdir(work)) == ["thesis.tex"]


def test_api_save_refuses_a_foreign_folder(tmp_path):
    model, _ = make_checkpoint(tmp_path / "ckpt")
    out = _foreign(tmp_path / "mine")
    with pytest.raises(OutputExistsError):
        api.save(model, None, out)
    assert sorted(os.listdir(out)) == ["thesis.tex"]


def test_empty_and_owned_folders_are_reused_and_marked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _, out = make_checkpoint(empty)
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["owner"] == "llmquant" and marker["kind"] == "checkpoint"
    assert is_owned(out)
    _, out2 = make_checkpoint(out, "weights.q=8")  # an llmquant checkpoint is replaced without --overwrite
    loaded, _ = api.load(out2)
    assert loaded.model.layers[0].self_attn.q_proj.q == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no .old / .tmp / .work left behind
    legacy = tmp_path / "legacy"
    os.rename(out, legacy)
    (legacy / MARKER_FILE).unlink()
    assert is_owned(legacy)  # checkpoints from before the marker: recognized by llmquant_config.json


def test_overwrite_replaces_a_foreign_folder_and_its_work_folder(tmp_path):
    out = _foreign(tmp_path / "mine")
    work = _foreign(tmp_path / "mine.work")
    model, _, _, _ = api.quantize_to_checkpoint(tiny_cfg(), out, progress=False, log=None, overwrite=True)
    assert not (out / "thesis.tex").exists() and not work.exists()
    loaded, _ = api.load(out)
    import torch

    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize("name, expected", [
    ("../../x", "x"), ("/etc/passwd", "etc-passwd"), ("a/b\\c", "a-b-c"), ("..", "run"), ("", "run"),
    (".hidden", "hidden"), ("-rf", "rf"), ("ok-name_1.2", "ok-name_1.2"), ("名前 v2", "v2"),
])
def test_config_names_become_one_safe_folder_under_runs(name, expected):
    from llmquant.api import default_out_dir

    out = default_out_dir(tiny_cfg(f"name={json.dumps(name)}"))
    assert out == Path("runs") / expected


def test_cli_refusal_is_one_line_naming_overwrite(tmp_path, capsys):
    out = _foreign(tmp_path / "mine")
    rc, _, err = run_cli(["quantize", str(TINY), "--out", str(out), "--no-progress"], capsys)
    assert rc == 2
    assert err == (f"llmquant: error: --out {out}: the folder exists and was not written by llmquant "
                   f"(no .llmquant marker); nothing was changed. Choose another --out, or pass --overwrite "
                   "to replace it\n")
    assert sorted(os.listdir(out)) == ["thesis.tex"]
