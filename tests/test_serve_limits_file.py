"""``llmquant serve --limits FILE``: YAML/JSON limits, validated (unknown keys and bad values are one-line
errors naming the file), with command-line flags overriding the file."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant.cli import build_parser
from llmquant.serve.limits import ServeLimits, limits_from_args, load_limits_file


def _args(*argv):
    return build_parser().parse_args(["serve", "tiny-llama", *argv])


def test_no_file_no_flags_gives_the_defaults():
    assert limits_from_args(_args()) == ServeLimits()


def test_yaml_and_json_files_set_every_limit(tmp_path):
    values = {"max_body_bytes": 4096, "max_prompt_tokens": 100, "max_tokens_cap": 32, "max_n": 2,
              "max_queue": 5, "max_batch": 3, "request_timeout_s": 12.5}
    (tmp_path / "l.yaml").write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    (tmp_path / "l.json").write_text(json.dumps(values))
    for name in ("l.yaml", "l.json"):
        assert load_limits_file(tmp_path / name) == ServeLimits(**values)
        assert limits_from_args(_args("--limits", str(tmp_path / name))) == ServeLimits(**values)


def test_flags_override_the_file_and_omitted_keys_keep_defaults(tmp_path):
    f = tmp_path / "limits.yml"
    f.write_text("max_batch: 16\nrequest_timeout_s: 30\n")
    got = limits_from_args(_args("--limits", str(f), "--max-batch", "2", "--max-queue", "9"))
    assert got == ServeLimits(max_batch=2, request_timeout_s=30.0, max_queue=9)
    assert limits_from_args(_args("--max-n", "3")) == ServeLimits(max_n=3)
    f.write_text("max_n: 100\n")  # valid only with the flag's larger queue
    assert limits_from_args(_args("--limits", str(f), "--max-queue", "200")) == ServeLimits(max_n=100, max_queue=200)
    with pytest.raises(ValueError, match=r"limits file .*limits\.yml \(with the flags given\): serve limit max_n"):
        limits_from_args(_args("--limits", str(f), "--max-queue", "50"))


@pytest.mark.parametrize("name, text, message", [
    ("a.yaml", "max_batch: 4\nmax_batchh: 8\n", r"unknown key 'max_batchh'; allowed: max_body_bytes, "),
    ("a.yaml", "max_queue: 2.5\n", r"max_queue must be an integer, got 2\.5"),
    ("a.yaml", "max_n: 5\nmax_queue: 2\n", r"max_n \(5\) must be <= max_queue \(2\)"),
    ("a.yaml", "- max_batch\n", r"expected a mapping of limit names to values, got list"),
    ("a.yaml", "max_batch: [1\n", r"not valid YAML"),
    ("a.json", "{\"max_batch\": 4,}", r"not valid JSON"),
    ("a.json", "{\"max_batch\": true}", r"max_batch must be a positive number, got True"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_limits_file(f)
    assert str(info.value).startswith(f"limits file {f}: ") and "\n" not in str(info.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"limits file .*nope\.yaml: cannot read it"):
        load_limits_file(tmp_path / "nope.yaml")


def test_serve_command_refuses_a_bad_limits_file_before_loading(tmp_path, capsys, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from llmquant.cli import main as cli_main
    from llmquant.commands import serve as serve_cmd

    def no_load(args):
        raise AssertionError("the model must not be loaded when the limits are invalid")

    monkeypatch.setattr(serve_cmd, "load_from_args", no_load)
    f = tmp_path / "bad.yaml"
    f.write_text("max_batch: 4\ntimeout: 3\n")
    assert cli_main(["serve", "tiny-llama", "--limits", str(f)]) == 2
    out = capsys.readouterr().out.strip()
    assert out == f"error: limits file {f}: unknown key 'timeout'; allowed: max_body_bytes, max_prompt_tokens, " \
                  "max_tokens_cap, max_n, max_queue, max_batch, request_timeout_s"
