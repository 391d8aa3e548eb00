"""Quantization pipeline: Hessians, GPTQ/LDLQ, quantized linears, activation/KV quantizers,
the layer-wise runner with resume, and checkpoints (see docs/ARCHITECTURE.md)."""

from llmquant.quant.activations import RowQuantizer, row_quantizer_from_config
from llmquant.quant.checkpoint import CheckpointError, load_quantized, save_checkpoint
from llmquant.quant.gptq import gptq_quantize
from llmquant.quant.hessian import HessianAccumulator
from llmquant.quant.linear import LatticeLinear, ScalarLinear, set_backend
from llmquant.quant.runner import quantize_layers

__all__ = [
    "CheckpointError", "HessianAccumulator", "LatticeLinear", "RowQuantizer", "ScalarLinear", "gptq_quantize",
    "load_quantized", "quantize_layers", "row_quantizer_from_config", "save_checkpoint",
    "set_backend",
]
