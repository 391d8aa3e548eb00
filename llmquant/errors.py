"""User-facing error classes (the lowest layer: imports nothing of the project).

An exception that derives from :class:`LlmquantError` is a *user* error: its message alone says
what is wrong (key path, file, expected shape / dtype / range, supported choices) and how to fix
it.  The ``llmquant`` CLI prints it as one line ``llmquant: error: <message>`` and exits with
status 2 (``--debug`` or ``LLMQUANT_DEBUG=1`` shows the traceback); any other exception is a bug
and keeps its traceback.

The classes also derive from the builtin they refine (``ValueError``, ``RuntimeError``, ...), so
callers that caught the builtin before keep working.
"""

from __future__ import annotations


class LlmquantError(Exception):
    """Base of every user-facing error; the message is one line naming the problem and the fix."""


class OutputExistsError(LlmquantError, FileExistsError):
    """An output path holds something llmquant did not write; it is refused unless ``--overwrite``."""


class ModelLoadError(LlmquantError, OSError):
    """A model spec could not be loaded (missing path, hub id not cached offline, unreadable config.json)."""


class UnsupportedArchitectureError(LlmquantError, ValueError):
    """The model's architecture has no role map; the message lists the supported ones."""


class NumericsError(LlmquantError, ArithmeticError):
    """NaN / Inf in calibration activations or a Hessian that no damping makes positive definite."""


def one_line(message: str) -> str:
    """``message`` with its line breaks and runs of blanks collapsed into single spaces."""
    return " ".join(str(message).split())
