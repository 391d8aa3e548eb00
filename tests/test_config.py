"""Config loading: shipped YAML files, --set overrides, errors naming the key path, bits per entry."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from llmquant.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    model_bits,
    validate_for_model,
    weight_bits,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
SMOL_SETTINGS = ["fp", "rtn-w4a16", "quarot-w4a16", "quarot-w4a4", "quarot-w4a4kv4", "e8-w4a16", "e8-w4a4kv4",
                 "e8-w3a16", "e8-w2a16", "nestquant-w4a16", "nestquant-w3a16", "nestquant-w2a16", "nestquant-w4a4",
                 "nestquant-w4a4kv4"]


def test_shipped_configs_exist_and_load():
    names = {p.stem for p in CONFIGS}
    for s in SMOL_SETTINGS:
        assert f"smollm2-135m-{s}" in names
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.name == path.stem
        assert cfg.version == 1
        # round trip through the saved (JSON) form
        assert config_from_dict(config_to_dict(cfg)) == cfg


def _base() -> dict:
    return {"version": 1, "name": "t", "weights": {"method": "lattice", "q": 14, "k": 2}}


@pytest.mark.parametrize(
    "data, overrides, key",
    [
        ({"version": 1, "weights": {"lattic": "E8"}}, [], "weights.lattic: unknown key; did you mean 'lattice'?"),
        ({"version": 1, "calibration": {"n_samples": "many"}}, [], "calibration.n_samples: expected an integer"),
        ({"version": 1, "rotation": {"enabled": 1}}, [], "rotation.enabled: expected true or false"),
        ({"version": 1, "weights": {"method": "lattice", "q": 32}}, [], "weights.q: 32 does not fit the 4-bit"),
        ({"version": 1, "kv": {"method": "scalar"}, "weights": {"method": "scalar"}}, [], "kv.method: KV-cache"),
        ({"version": 1, "activations": {"method": "lattice"}}, [], "activations.method:"),
        ({"version": 2}, [], "version: 2 is not supported"),
        ({"name": "x"}, [], "version: missing"),
        ({"version": 1, "weights": {"method": "lattice", "act_order": True}}, [], "weights.act_order:"),
        ({"version": 1, "activations": {"method": "scalar", "clip_ratio": 1.5}, "weights": {"method": "scalar"}},
         [], "activations.clip_ratio:"),
        ({"version": 1}, ["eval.max_tokns=5"], "eval.max_tokns: unknown key; did you mean 'max_tokens'?"),
        ({"version": 1}, ["weights=3"], "weights: is a section"),
        ({"version": 1}, ["eval.ppl=[wikitext3]"], "eval.ppl[0]: 'wikitext3' is not one of"),
        ({"version": 1}, ["model.seed=abc"], "model.seed: expected an integer"),
    ],
)
def test_errors_name_the_key_path(data, overrides, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, overrides)
    assert key in str(info.value)


def test_file_errors_name_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("version: 1\nweights:\n  methd: scalar\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: weights.methd: unknown key; did you mean 'method'\?"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_parse_yaml_values_and_configs_are_frozen():
    cfg = config_from_dict(_base(), ["eval.max_tokens=16384", "rotation.enabled=true", "eval.ppl=[wikitext2,c4]",
                                     "eval.max_tokens=null", "calibration.n_samples=8"])
    assert cfg.eval.max_tokens is None
    assert cfg.rotation.enabled is True
    assert cfg.eval.ppl == ("wikitext2", "c4")
    assert cfg.calibration.n_samples == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"
    assert isinstance(cfg, Config)


def test_model_dependent_checks():
    cfg = config_from_dict(_base())
    validate_for_model(cfg, 64, {"layers.0.q": (64, 64)})
    with pytest.raises(ConfigError, match="weights.lattice: hidden size 60"):
        validate_for_model(cfg, 60, {"layers.0.q": (60, 60)})
    scal = config_from_dict({"version": 1, "weights": {"method": "scalar", "group_size": 32}})
    with pytest.raises(ConfigError, match="weights.group_size: 32 does not divide the input dim 48"):
        validate_for_model(scal, 48, {"layers.0.q": (48, 48)})


def test_hash_ignores_eval_and_name_only():
    a = config_from_dict(_base())
    assert config_hash(a) == config_hash(config_from_dict(_base(), ["eval.max_tokens=7", "name=zz"]))
    assert config_hash(a) != config_hash(config_from_dict(_base(), ["weights.q=12"]))


def test_bits_are_computed():
    smol = {"layers.0.q": (576, 576), "layers.0.down": (576, 1536)}
    nq = load_config(CONFIGS[0].parent / "smollm2-135m-nestquant-w4a4kv4.yaml")
    e8 = load_config(CONFIGS[0].parent / "smollm2-135m-e8-w4a4kv4.yaml")
    qr = load_config(CONFIGS[0].parent / "smollm2-135m-quarot-w4a4kv4.yaml")
    assert weight_bits(nq.weights, 576) == pytest.approx(math.log2(14) + 1 / 8 + 16 / 576)
    # box code b=3: one 32-bit word per 8 weights + the fp16 row scale
    assert e8.weights.code == "box" and weight_bits(e8.weights, 576) == pytest.approx(4 + 16 / 576)
    assert weight_bits(qr.weights, 576) == pytest.approx(4 + 32 / 576)
    bq = model_bits(qr, smol, 64)
    # the E8 settings must not spend more bits than the scalar baseline in any slot
    for cfg in (nq, e8):
        be = model_bits(cfg, smol, 64)
        for key in ("weights", "activations", "kv"):
            assert be[key] <= bq[key], (cfg.name, key)
    fp = load_config(CONFIGS[0].parent / "smollm2-135m-fp.yaml")
    assert model_bits(fp, smol, 64) == {"weights": 16.0, "activations": 16.0, "kv": 16.0}
    w3 = load_config(CONFIGS[0].parent / "smollm2-135m-e8-w3a16.yaml")
    w2 = load_config(CONFIGS[0].parent / "smollm2-135m-e8-w2a16.yaml")
    assert 2.9 < model_bits(w3, smol, 64)["weights"] < 3.2
    assert 1.8 < model_bits(w2, smol, 64)["weights"] < 2.2


def test_dynamic_box_keys_validated_and_hash_stable():
    base = config_from_dict(_base())
    # box keys of a Voronoi activation/KV section do not enter the hash (configs made before box activations)
    assert config_hash(base) == config_hash(config_from_dict(_base(), ["activations.box_bits=2"]))
    with pytest.raises(ConfigError, match="activations.code"):
        config_from_dict(_base(), ["activations.method=lattice", "activations.code=boxx"])
    with pytest.raises(ConfigError, match="kv.box_bits"):
        config_from_dict(_base(), ["kv.method=lattice", "kv.code=box", "kv.box_bits=4"])
