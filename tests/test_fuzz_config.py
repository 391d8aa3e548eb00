"""Fuzzing configs: random config data, random ``--set`` overrides, random and mutated YAML files.
Each gives a valid Config (that round-trips) or a ConfigError; through the CLI, exit 0 or one error
line with exit 2; never another exception or a hang."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
from pathlib import Path

from _safety_support import TINY, no_hang, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmquant.api import default_out_dir
from llmquant.config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from llmquant.config import schema as S

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(S, str(f.type), None))}
SECTION_CLASSES = {name: getattr(S, str(tp)) for name, tp in SECTIONS.items()}
TOP = [f.name for f in dataclasses.fields(Config) if f.name not in SECTIONS]
PATHS = TOP + [f"{s}.{f.name}" for s, cls in SECTION_CLASSES.items() for f in dataclasses.fields(cls)]
WORDS = ["lattice", "scalar", "none", "gptq", "rtn", "E8", "D4", "auto", "cpu", "cuda:0", "gpu", "wikitext2", "c4",
         "float16", "bfloat16", "min_error", "first_fit", "reference", "triton", "tiny-random-llama", "e8", "fp"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10), st.sampled_from(WORDS),
)
keys = st.one_of(st.sampled_from([f.name for c in SECTION_CLASSES.values() for f in dataclasses.fields(c)] + TOP),
                 st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(keys, inner, max_size=3)), max_leaves=8)
section_data = {name: st.dictionaries(st.one_of(st.sampled_from([f.name for f in dataclasses.fields(cls)]), keys),
                                      values, max_size=4)
                for name, cls in SECTION_CLASSES.items()}
config_data = st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), scalars)},
    optional={**section_data, **{k: scalars for k in TOP if k != "version"}, "extra": values},
)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _check_config(cfg: Config, data: dict | None = None) -> None:
    """A config that loaded is valid, round-trips, and holds the values it was given."""
    assert isinstance(cfg, Config)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    out = default_out_dir(cfg)
    assert out.parent == Path("runs") and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", out.name)
    for section, d in (data or {}).items():
        if section in SECTIONS and isinstance(d, dict):
            for k, v in d.items():
                got = getattr(getattr(cfg, section), k)
                if isinstance(v, list):
                    assert got == tuple(v)
                elif not (isinstance(v, str) and isinstance(got, tuple)):
                    assert _same(got, v), (section, k, got, v)


@FUZZ
@given(config_data)
def test_random_config_data_gives_a_config_or_a_config_error(data):
    with no_hang(20):
        try:
            cfg = config_from_dict(data)
        except ConfigError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
    _check_config(cfg, data)


overrides = st.lists(
    st.builds(lambda k, v: f"{k}={v}",
              st.one_of(st.sampled_from(PATHS), st.sampled_from(PATHS).map(lambda p: p + "x"), st.text(max_size=12)),
              st.one_of(st.sampled_from(WORDS), st.integers(-5, 2**65).map(str), st.text(max_size=12))),
    max_size=4,
) | st.lists(st.text(max_size=15), max_size=2)


@FUZZ
@given(overrides)
def test_random_set_overrides_give_a_config_or_a_config_error(sets):
    with no_hang(20):
        try:
            cfg = load_config(TINY, sets)
        except ConfigError as exc:
            assert str(exc).startswith(str(TINY))
            return
    _check_config(cfg)


def _mutate(text: str, ops) -> str:
    for kind, pos, payload in ops:
        i = pos % (len(text) + 1)
        if kind == "insert":
            text = text[:i] + payload + text[i:]
        elif kind == "delete":
            text = text[:i] + text[i + len(payload) + 1:]
        else:  # duplicate a line
            lines = text.splitlines(keepends=True) or [""]
            j = pos % len(lines)
            text = "".join(lines[:j] + [lines[j], lines[j]] + lines[j + 1:])
    return text


mutations = st.lists(st.tuples(st.sampled_from(["insert", "delete", "dup"]), st.integers(0, 10**6),
                               st.one_of(st.sampled_from([":", " ", "\n", "  ", "-", "[", "{", "&a", "*a", "'", '"',
                                                          "\t", "!!python/object:os.system", "%YAML 9\n", "?"]),
                                         st.text(max_size=4))),
                     min_size=1, max_size=4)
yaml_texts = st.one_of(st.text(max_size=200), mutations.map(lambda ops: _mutate(TINY.read_text(), ops)),
                       st.binary(max_size=60).map(lambda b: b.decode("latin-1")))


def _write(text: str, raw: bytes | None = None) -> Path:
    fd, name = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "wb") as f:
        f.write(raw if raw is not None else text.encode("utf-8", "surrogatepass"))
    return Path(name)


@FUZZ
@given(yaml_texts, st.booleans())
def test_random_yaml_files_give_a_config_or_a_config_error(text, as_latin1):
    path = _write(text, text.encode("latin-1", "replace") if as_latin1 else None)
    try:
        with no_hang(20):
            try:
                cfg = load_config(path)
            except ConfigError as exc:
                msg = str(exc)
                assert msg.startswith(str(path)) and "\n" not in msg
                return
        _check_config(cfg)
    finally:
        path.unlink()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(yaml_texts, overrides)
def test_cli_answers_random_configs_with_success_or_one_error_line(capsys, monkeypatch, text, sets):
    from llmquant import api

    def fake_quantize(cfg, out, **kw):  # the config is what is fuzzed, not the quantizer
        return None, None, {"bits": {"weights": 4.0, "activations": 16.0, "kv": 16.0}, "layers": [],
                            "seconds": 0.0}, out or default_out_dir(cfg)

    monkeypatch.setattr(api, "quantize_to_checkpoint", fake_quantize)
    path = _write(text)
    try:
        with no_hang(20):
            rc, out, err = run_cli(["quantize", str(path), *[a for s in sets for a in ("--set", s)]], capsys)
    finally:
        path.unlink()
    if rc == 0:
        assert err == "" and '"bits"' in out
    else:
        assert rc == 2 and err.startswith("llmquant: error: ") and err.count("\n") == 1, err


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_any_config_name_stays_one_folder_inside_runs(name):
    cfg = config_from_dict({"version": 1, "name": name})
    out = default_out_dir(cfg)
    assert out.parent == Path("runs") and len(out.name) <= 100
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", out.name) and out.name not in (".", "..")
    assert (Path("/base") / out).resolve().parent == Path("/base/runs")
