"""Hadamard rotations: constructions (Sylvester, Paley I/II), fast transform, seeded random Hadamard,
online rotation modules and the ``llmquant`` attention function (registered lazily)."""

from llmquant.rotation.attention import ensure_registered, llmquant_attention_forward
from llmquant.rotation.constructions import ORDER_TABLE, hadamard_order_matrix, split_order
from llmquant.rotation.fwht import fwht, hadamard_matrix
from llmquant.rotation.online import InputRotatedLinear, OutputRotated
from llmquant.rotation.random_hadamard import HadamardRotation, random_hadamard, random_signs

__all__ = [
    "ORDER_TABLE",
    "HadamardRotation",
    "InputRotatedLinear",
    "OutputRotated",
    "ensure_registered",
    "fwht",
    "hadamard_matrix",
    "hadamard_order_matrix",
    "llmquant_attention_forward",
    "random_hadamard",
    "random_signs",
    "split_order",
]
