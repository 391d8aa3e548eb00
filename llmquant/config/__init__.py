"""Typed, versioned, validated run configs: YAML loading, ``--set`` overrides, bits per entry."""

from llmquant.config.bits import dynamic_bits, model_bits, weight_bits
from llmquant.config.load import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    validate,
    validate_for_model,
)
from llmquant.config.schema import (
    SCHEMA_VERSION,
    CalibrationConfig,
    Config,
    DynamicQuantConfig,
    EvalConfig,
    GuardConfig,
    ModelConfig,
    RotationConfig,
    WeightConfig,
)

__all__ = [
    "SCHEMA_VERSION", "CalibrationConfig", "Config", "ConfigError", "DynamicQuantConfig", "EvalConfig", "GuardConfig",
    "ModelConfig", "RotationConfig", "WeightConfig", "apply_overrides", "config_from_dict", "config_hash",
    "config_to_dict", "dynamic_bits", "load_config", "model_bits", "validate", "validate_for_model",
    "weight_bits",
]
