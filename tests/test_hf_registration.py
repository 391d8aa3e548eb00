"""``import llmquant`` registers the transformers quantizer lazily (no torch / transformers import), and the
registration also completes when transformers' table is first imported by llmquant.hf's own modules."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = ("from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as M, AUTO_QUANTIZATION_CONFIG_MAPPING as C; "
         "assert M['llmquant'].__name__ == 'LlmquantHfQuantizer' and C['llmquant'].__name__ == 'LlmquantConfig'; "
         "assert not any(type(f).__name__ == '_HfFinder' for f in sys.meta_path)")


@pytest.mark.parametrize("first", [
    "import llmquant; assert 'torch' not in sys.modules and 'transformers' not in sys.modules",
    "from llmquant.hf.quantizer import LlmquantHfQuantizer",  # transformers' table imported mid-module
])
def test_registration(first):
    code = f"import sys; {first}; {CHECK}"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
