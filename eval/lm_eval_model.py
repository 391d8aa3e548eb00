"""lm-eval model type ``"llmquant"``: any llmquant checkpoint (or model spec) under lm-eval's harness.

``register()`` adds the type to lm-eval's model registry; afterwards
``lm_eval.simple_evaluate(model="llmquant", model_args="path=DIR", ...)`` works.  The class
loads ``path`` with :func:`llmquant.api.load` and hands the model object to lm-eval's own HF
model class (``HFLM``), so tokenization, batching and scoring are lm-eval's, unchanged.

lm-eval 0.4 discovers models only through its built-in table and modules that were imported
before the run (it has no plugin entry-point group), so its CLI is reached through a wrapper
that registers first:

    python -m llmquant.eval.lm_eval_model --model llmquant --model_args path=DIR --tasks piqa --limit 100

takes exactly lm-eval's command-line arguments.  lm-eval is imported only inside functions:
importing this module loads nothing optional.
"""

from __future__ import annotations

import sys

MODEL_NAME = "llmquant"

_CLASS = None


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the 'llmquant' lm-eval model needs lm-eval: pip install 'llmquant[eval]' (lm-eval>=0.4,<0.5)"
        ) from exc


def model_class():
    """The ``HFLM`` subclass (built on first use so lm-eval stays an optional import)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    class LlmquantLM(HFLM):
        """``model_args``: ``path`` (checkpoint dir or model spec, required); the rest goes to ``HFLM``."""

        def __init__(self, path: str | None = None, pretrained=None, tokenizer=None, **kwargs):
            if pretrained is None:
                if not path:
                    raise ValueError("the llmquant lm-eval model needs model_args path=DIR (a checkpoint or spec)")
                from llmquant.api import load

                pretrained, tokenizer = load(path)
            # HFLM accepts a model object; device/dtype strings from the CLI do not apply to it.
            for key in ("device", "dtype", "parallelize"):
                kwargs.pop(key, None)
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    _CLASS = LlmquantLM
    return _CLASS


def register() -> type:
    """Register ``"llmquant"`` in lm-eval's model registry (idempotent); returns the class."""
    cls = model_class()
    from lm_eval.api.registry import model_registry

    if model_registry.get(MODEL_NAME, None) is not cls:
        model_registry.register(MODEL_NAME)(cls)
    return cls


def main(argv: list[str] | None = None) -> int:
    """lm-eval's CLI with the ``llmquant`` model type registered."""
    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
