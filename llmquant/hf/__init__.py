"""transformers integration: ``from_pretrained`` / ``save_pretrained`` of llmquant checkpoints, quantize on load.

* :class:`~llmquant.hf.config.LlmquantConfig` (``quantization_config``, quant method ``"llmquant"``) and
  :class:`~llmquant.hf.quantizer.LlmquantHfQuantizer`, registered with transformers by :func:`register`;
* :func:`llmquant.hf.on_load.quantize_rtn`: the calibration-free quantization behind
  ``from_pretrained(fp_dir, quantization_config=LlmquantConfig(cfg))``.

Registration (why it is not "nothing at import time"): the issue asks that ``import llmquant`` alone make
``AutoModelForCausalLM.from_pretrained(CKPT)`` work, and transformers only consults its own tables
(``register_quantization_config`` / ``register_quantizer``), which live in ``transformers.quantizers.auto``;
importing that module pulls in torch and transformers (seconds).  So ``import llmquant`` imports nothing and
only puts one finder on ``sys.meta_path`` (code in ``llmquant/__init__.py``, inline because each extra module
import costs ~0.7 ms on this box).  The finder answers only for ``transformers.quantizers.auto``: it wraps that
module's loader so that right after the module body runs, :func:`register` adds the ``llmquant`` method, and the
finder removes itself.  When transformers already loaded the table, :func:`register` runs at once.  A
registration error propagates (a missing quantizer would make transformers skip ``quantization_config`` with
a warning and load a broken model).

Measured, ``python -X importtime -c "import llmquant"``, self µs of the ``llmquant`` line, median of 15 runs,
two rounds each, old (HEAD) and new ``__init__.py`` side by side: with bytecode caching 327 / 259 before,
316 / 418 after; without it (this box sets ``PYTHONDONTWRITEBYTECODE=1``, so the source is compiled on each
import) 385 / 430 before, 1,162 / 1,145 after.  Neither torch nor transformers is imported
(``tests/test_hf_quantize_on_load.py::test_registration_is_lazy_and_complete``).  Explicit alternative for code
that imports transformers' model classes in a process where llmquant is never imported: call
``llmquant.hf.register()``.

``LlmquantConfig`` and ``LlmquantHfQuantizer`` are importable from here (lazily: importing them imports
transformers).
"""

from __future__ import annotations

__all__ = ["LlmquantConfig", "LlmquantHfQuantizer", "attach", "register"]


_MODULES = ("llmquant.hf.config", "llmquant.hf.quantizer")
#: set when the import hook fired while one of :data:`_MODULES` was still executing (it imports transformers'
#: quantizer table itself); that module then finishes the registration on its last line
_pending = False


def register(_ready: str | None = None) -> None:
    """Register quant method ``"llmquant"`` (config and quantizer) with transformers; idempotent.  Raises
    ``RuntimeError`` when another class already holds the name.

    When transformers' table is first imported *by* ``llmquant.hf.config`` / ``llmquant.hf.quantizer`` (e.g.
    ``from llmquant.hf.quantizer import LlmquantHfQuantizer`` in a fresh process), the hook fires while that
    module is half-executed; registration is then deferred to the end of that module (``_ready``: the module
    that calls from its last line, whose classes exist by then)."""
    import sys

    global _pending
    for name in _MODULES:
        spec = getattr(sys.modules.get(name), "__spec__", None)
        if name != _ready and getattr(spec, "_initializing", False):
            _pending = True
            return
    _pending = False
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
        register_quantization_config,
        register_quantizer,
    )

    from llmquant.hf.config import QUANT_METHOD, LlmquantConfig
    from llmquant.hf.quantizer import LlmquantHfQuantizer

    for table, cls, reg in ((AUTO_QUANTIZATION_CONFIG_MAPPING, LlmquantConfig, register_quantization_config),
                            (AUTO_QUANTIZER_MAPPING, LlmquantHfQuantizer, register_quantizer)):
        have = table.get(QUANT_METHOD)
        if have is None:
            reg(QUANT_METHOD)(cls)
        elif have is not cls:
            raise RuntimeError(f"transformers already has a quantization method {QUANT_METHOD!r} "
                               f"({have.__module__}.{have.__qualname__}); llmquant cannot register its own")


def _finish_pending(module_name: str) -> None:
    """Called on the last line of :data:`_MODULES`: complete a registration the hook had to defer."""
    if _pending:
        register(_ready=module_name)


def attach(model, cfg, specs: dict, rotation_plan: dict | None) -> None:
    """Make a model quantized in memory (:func:`llmquant.api.quantize`, ``llmquant.api.load``) look like one
    that ``from_pretrained`` loaded through the quantizer: ``model.config.quantization_config`` (an
    :class:`LlmquantConfig` with the rotation plan and module specs), ``model.hf_quantizer``,
    ``model.is_quantized``; so ``model.save_pretrained(DIR)`` writes a folder ``from_pretrained`` loads back."""
    register()
    from llmquant.hf.config import LlmquantConfig
    from llmquant.hf.quantizer import LlmquantHfQuantizer

    qc = LlmquantConfig(cfg, rotation_plan=rotation_plan, quantized={str(i): s for i, s in specs.items()})
    model.config.quantization_config = qc
    model.hf_quantizer = LlmquantHfQuantizer(qc, pre_quantized=True)
    model.is_quantized = True
    model.quantization_method = qc.quant_method


def __getattr__(name):
    if name == "LlmquantConfig":
        from llmquant.hf.config import LlmquantConfig

        return LlmquantConfig
    if name == "LlmquantHfQuantizer":
        from llmquant.hf.quantizer import LlmquantHfQuantizer

        return LlmquantHfQuantizer
    raise AttributeError(f"module 'llmquant.hf' has no attribute {name!r}")
