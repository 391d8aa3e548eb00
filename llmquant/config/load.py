"""YAML -> :class:`~llmquant.config.schema.Config`, ``--set a.b=c`` overrides, validation.

Every error is a :class:`ConfigError` whose message starts with the full key path, e.g.
``weights.lattic: unknown key; did you mean 'lattice'?``.  Checks that need the model
(hidden size divisible by 8, group size dividing the input dim) are in
:func:`validate_for_model`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

from llmquant.config import schema as S
from llmquant.errors import LlmquantError

#: ``model.device``: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:<index>``
_DEVICE_RE = r"auto|cpu|mps|cuda(:[0-9]{1,3})?"
#: seeds go to ``torch.Generator.manual_seed`` (a 64-bit integer)
_SEED_MAX = 2**63 - 1


class ConfigError(LlmquantError, ValueError):
    """A config value is unknown, mistyped or inconsistent; the message names the key path
    (and the file, and for YAML syntax errors the line and column)."""


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(path: str, key: str, allowed: list[str]) -> ConfigError:
    full = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(allowed)}"
    return ConfigError(f"{full}: unknown key{hint}")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of keys, got {type(value).__name__} {value!r}")
        return _build(tp, value, path)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{path}: {value} is too large for a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {tp!r}")  # pragma: no cover - schema bug


def _build(cls, data: dict, path: str = ""):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(path, str(key), names)
        kwargs[key] = _coerce(value, hints[key], f"{path}.{key}" if path else key)
    return cls(**kwargs)


def _check_choice(path: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(choices)}")


def _check_range(path: str, value, lo, hi=None) -> None:
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{path}: {value!r} must be {rng}")


def _validate_dynamic(path: str, d: S.DynamicQuantConfig) -> None:
    _check_choice(f"{path}.method", d.method, S.DYNAMIC_METHODS)
    if d.method == "scalar":
        _check_range(f"{path}.bits", d.bits, 2, 8)
        if not 0.0 < d.clip_ratio <= 1.0:
            raise ConfigError(f"{path}.clip_ratio: {d.clip_ratio} must be in (0, 1]")
    if d.method == "lattice":
        _check_choice(f"{path}.lattice", d.lattice, S.LATTICES)
        _check_range(f"{path}.q", d.q, 2, 16)
        _check_range(f"{path}.k", d.k, 1, 256)
        _check_choice(f"{path}.choose", d.choose, S.CHOOSE_RULES)
        _check_choice(f"{path}.code", d.code, S.WEIGHT_CODES)
        if d.code == "box":
            _check_range(f"{path}.box_bits", d.box_bits, 1, 3)
            _check_choice(f"{path}.box_variant", d.box_variant, S.BOX_VARIANTS)


def validate(cfg: S.Config) -> S.Config:
    """Model-independent checks: choices, ranges and impossible combinations."""
    if cfg.version != S.SCHEMA_VERSION:
        raise ConfigError(
            f"version: {cfg.version} is not supported (this llmquant reads version {S.SCHEMA_VERSION})"
        )
    _check_choice("method", cfg.method, S.METHOD_LABELS)
    _check_choice("model.dtype", cfg.model.dtype, S.DTYPES)
    _check_choice("model.backend", cfg.model.backend, S.BACKENDS)
    _check_choice("model.weight_cache", cfg.model.weight_cache, S.WEIGHT_CACHE_MODES)
    if cfg.model.embed_dtype is not None:
        _check_choice("model.embed_dtype", cfg.model.embed_dtype, S.DTYPES)
    import re

    if not re.fullmatch(_DEVICE_RE, cfg.model.device):
        raise ConfigError(f"model.device: {cfg.model.device!r} is not a device; use auto, cpu, cuda, cuda:0, ... or mps")
    for key, seed in (("model.seed", cfg.model.seed), ("rotation.seed", cfg.rotation.seed),
                      ("calibration.seed", cfg.calibration.seed)):
        _check_range(key, seed, 0, _SEED_MAX)
    _check_choice("rotation.norm_gains", cfg.rotation.norm_gains, ("fold", "online"))
    c = cfg.calibration
    _check_choice("calibration.dataset", c.dataset, ("wikitext2", "c4"))
    _check_range("calibration.n_samples", c.n_samples, 1)
    _check_range("calibration.seq_len", c.seq_len, 8)
    _check_range("calibration.batch_size", c.batch_size, 1)
    w = cfg.weights
    _check_choice("weights.method", w.method, S.WEIGHT_METHODS)
    _check_choice("weights.algorithm", w.algorithm, S.WEIGHT_ALGORITHMS)
    if w.method == "scalar":
        _check_range("weights.bits", w.bits, 2, 8)
        _check_range("weights.group_size", w.group_size, 0)
    if w.method == "lattice":
        _check_choice("weights.lattice", w.lattice, S.LATTICES)
        if w.q > 16:
            raise ConfigError(
                f"weights.q: {w.q} does not fit the 4-bit (nibble) code packing of LatticeLinear; use q <= 16"
            )
        _check_range("weights.q", w.q, 2)
        _check_range("weights.k", w.k, 1, 256)
        _check_choice("weights.choose", w.choose, S.CHOOSE_RULES)
        _check_choice("weights.code", w.code, S.WEIGHT_CODES)
        if w.code == "box":
            _check_range("weights.box_bits", w.box_bits, 1, 3)
            _check_choice("weights.box_variant", w.box_variant, S.BOX_VARIANTS)
        if w.act_order:
            raise ConfigError(
                "weights.act_order: not supported with lattice weights (8-column blocks must stay "
                "contiguous); set it to false"
            )
    if w.method != "none":
        if w.block_size % 8 or w.block_size <= 0:
            raise ConfigError(f"weights.block_size: {w.block_size} must be a positive multiple of 8")
        if not 0.0 <= w.percdamp < 1.0:
            raise ConfigError(f"weights.percdamp: {w.percdamp} must be in [0, 1)")
    _validate_dynamic("activations", cfg.activations)
    _validate_dynamic("kv", cfg.kv)
    if cfg.activations.method != "none" and w.method == "none":
        raise ConfigError(
            "activations.method: activation quantization lives in the quantized linear modules; "
            "set weights.method to scalar or lattice as well"
        )
    if cfg.kv.method != "none" and not (cfg.rotation.enabled and cfg.rotation.qk):
        raise ConfigError(
            "kv.method: KV-cache quantization needs the online Q/K Hadamard rotation; "
            "set rotation.enabled: true and rotation.qk: true"
        )
    e = cfg.eval
    _check_range("eval.context", e.context, 8)
    if e.max_tokens is not None:
        _check_range("eval.max_tokens", e.max_tokens, 1)
    for i, name in enumerate(e.ppl):
        _check_choice(f"eval.ppl[{i}]", name, ("wikitext2", "c4"))
    g = cfg.guard
    for key, value in (("guard.max_rel_err", g.max_rel_err), ("guard.max_linear_rel_err", g.max_linear_rel_err)):
        if not value > 0:
            raise ConfigError(f"{key}: {value} must be > 0 (a relative error bound)")
    if not g.ratio > 1:
        raise ConfigError(f"guard.ratio: {g.ratio} must be > 1 (a multiple of the median of earlier layers)")
    _check_range("guard.min_history", g.min_history, 1)
    return cfg


def validate_for_model(cfg: S.Config, hidden_size: int, linear_shapes: dict[str, tuple[int, int]]) -> None:
    """Checks that need the model: lattice blocks need input dims divisible by 8, scalar
    groups must divide each input dim.  ``linear_shapes``: name -> (out, in)."""
    w = cfg.weights
    if w.method == "lattice" or cfg.activations.method == "lattice":
        if hidden_size % 8:
            raise ConfigError(
                f"weights.lattice: hidden size {hidden_size} of {cfg.model.spec} is not divisible by 8 "
                "(E8 blocks); use weights.method: scalar"
            )
        for name, (_, k) in linear_shapes.items():
            if k % 8:
                raise ConfigError(
                    f"weights.lattice: input dim {k} of {name} is not divisible by 8; use weights.method: scalar"
                )
    if w.method == "scalar" and w.group_size:
        for name, (_, k) in linear_shapes.items():
            if k % w.group_size:
                raise ConfigError(
                    f"weights.group_size: {w.group_size} does not divide the input dim {k} of {name}"
                )


def _parse_value(text: str, key: str = "") -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text != "" else ""
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"--set {key}={text}: the value is not valid YAML ({_yaml_problem(exc)}); "
                          "quote it, e.g. --set name='\"a: b\"'") from None


def _yaml_problem(exc) -> str:
    """One line of a PyYAML error: the problem (and its context), without the source excerpt."""
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = "; ".join(str(p) for p in parts if p) or str(exc).splitlines()[0]
    return " ".join(text.split())


def _plain_copy(data: Any, path: str = "") -> Any:
    """Deep copy of parsed YAML (dicts, lists, scalars); a self-referencing structure (YAML aliases
    that contain themselves) or a nesting deeper than any config raises ``ConfigError``."""
    if path.count(".") + path.count("[") > 16:
        raise ConfigError(f"{path}: nested too deeply (a config is at most two levels of keys)")
    if isinstance(data, dict):
        return {k: _plain_copy(v, f"{path}.{k}" if path else str(k)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain_copy(v, f"{path}[{i}]") for i, v in enumerate(data)]
    return data


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``a.b=c`` strings to a raw config dict (values parsed as YAML scalars/lists).

    Key paths are checked against the schema so a typo fails with a suggestion.
    """
    data = _plain_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. eval.max_tokens=16384")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        cls = S.Config
        node = data
        for depth, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(cls)]
            prefix = ".".join(parts[:depth])
            if part not in names:
                raise _unknown(prefix, part, names)
            tp = _hints(cls)[part]
            if depth == len(parts) - 1:
                if dataclasses.is_dataclass(tp):
                    raise ConfigError(f"{key}: is a section; set one of its keys, e.g. {key}.{dataclasses.fields(tp)[0].name}=...")
                node[part] = _parse_value(raw, key)
            else:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"{'.'.join(parts[:depth + 1])}: is a value, not a section")
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{'.'.join(parts[:depth + 1])}: expected a mapping")
                cls = tp
    return data


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> S.Config:
    """Build and validate a config from plain data (e.g. parsed YAML or a saved checkpoint)."""
    if not isinstance(data, dict):
        raise ConfigError(f"<root>: expected a mapping of keys, got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    if "version" not in data:
        raise ConfigError(f"version: missing; add 'version: {S.SCHEMA_VERSION}' at the top of the config")
    return validate(_build(S.Config, data))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> S.Config:
    """Read a YAML config file, apply ``--set`` overrides and validate."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (see configs/ for the shipped ones)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({' '.join(str(exc).split())}); "
                          "a config is a UTF-8 YAML text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        raise ConfigError(f"{path}: unreadable YAML value ({' '.join(str(exc).split())})") from None
    if data is None:
        data = {}
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_to_dict(cfg: S.Config) -> dict:
    """Plain JSON-able dict (tuples become lists) that :func:`config_from_dict` reads back."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


#: keys of the ``model`` section that do not change the quantized model (where and how it runs); left
#: out of :func:`config_hash`, so resume state and checkpoints made before they existed still match.
RUNTIME_MODEL_KEYS = ("backend", "offload", "weight_cache")
#: ``weights`` keys of the box code; left out of :func:`config_hash` for the Voronoi code (the default)
BOX_WEIGHT_KEYS = ("code", "box_bits", "box_variant")


def config_hash(cfg: S.Config, ignore: tuple[str, ...] = ("eval", "name", "method", "guard")) -> str:
    """Stable hash of the parts of a config that change the quantized model (eval, ``model.backend``
    and ``model.offload`` excluded)."""
    import hashlib

    d = config_to_dict(cfg)
    for k in ignore:
        d.pop(k, None)
    for k in RUNTIME_MODEL_KEYS:
        d.get("model", {}).pop(k, None)
    model = d.get("model", {})
    if model.get("embed_dtype", None) in (None, model.get("dtype")):  # the same model as before the key existed
        model.pop("embed_dtype", None)
    for section in ("weights", "activations", "kv"):  # hashes of configs made before box codes
        if d.get(section, {}).get("code", "voronoi") == "voronoi":
            for k in BOX_WEIGHT_KEYS:
                d[section].pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
