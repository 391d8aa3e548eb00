"""Evaluation and calibration text (WikiText-2, C4): offline data folder or HF ``datasets``."""

from llmquant.data.text import (
    DataNotFoundError,
    calibration_batch,
    load_text,
    resolve_data_dir,
    tokenize_text,
)

__all__ = ["DataNotFoundError", "calibration_batch", "load_text", "resolve_data_dir", "tokenize_text"]
