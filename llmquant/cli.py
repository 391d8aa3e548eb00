"""The ``llmquant`` console script.

Each subcommand lives in its own module under :mod:`llmquant.commands`; a module
exposes ``register(subparsers)`` which adds its parser and sets ``func`` to the
callable that runs it.  Modules are imported only when the CLI is built, never at
package import time.

Errors: a user-facing error (bad config or YAML, missing data, unsupported architecture, corrupt
checkpoint, refused output folder, ...) prints one line ``llmquant: error: <what is wrong and how
to fix it>`` and exits with status 2; ``--debug`` (anywhere on the command line) or
``LLMQUANT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Subcommand modules, in the order ``llmquant --help`` lists them.
COMMAND_MODULES = (
    "llmquant.commands.theory",
    "llmquant.commands.bench",
    "llmquant.commands.inspect",
    "llmquant.commands.quantize",
    "llmquant.commands.eval",
    "llmquant.commands.run",
    "llmquant.commands.generate",
    "llmquant.commands.serve",
    "llmquant.commands.report",
)


#: environment variable that, set to anything but ``""``/``0``, makes user errors show their traceback
DEBUG_ENV = "LLMQUANT_DEBUG"
#: user-facing error classes defined in modules the CLI does not import up front (``module.QualName``);
#: matched along the exception's MRO so catching them imports nothing
_USER_ERROR_NAMES = frozenset({
    "llmquant.data.text.DataNotFoundError",
    "llmquant.eval.tasks.base.TaskDataMissing",
    "llmquant.eval.report.ReportError",
})
#: builtin errors whose message names the file at fault (user input, not a bug)
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``llmquant: error: <message> (see `<prog> --help`)``, exit 2
    (subcommand parsers inherit the class)."""

    def error(self, message: str):
        from llmquant.errors import one_line

        self.exit(2, f"llmquant: error: {one_line(message)} (see `{self.prog} --help`)\n")


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--debug`` on ``parser`` and, recursively, on every subcommand parser below it (so it works
    before or after the subcommand); only the top-level one has a default."""
    if not any("--debug" in a.option_strings for a in parser._actions):
        parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                            help=f"show the Python traceback of errors (also: {DEBUG_ENV}=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _add_debug_flag(child, top=False)


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message shown for a user-facing error, or None when ``exc`` is a bug.

    User-facing: :class:`llmquant.errors.LlmquantError` (config, checkpoint, output folder, architecture,
    numerics, model loading), missing data / task files, report inputs, missing or unreadable files,
    and running out of accelerator memory (with what to change)."""
    from llmquant.errors import LlmquantError, one_line

    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    if isinstance(exc, (LlmquantError, *_USER_OS_ERRORS)) or names & _USER_ERROR_NAMES:
        return one_line(str(exc) or type(exc).__name__)
    if "torch.OutOfMemoryError" in names or "torch.cuda.OutOfMemoryError" in names:
        return ("out of accelerator memory; lower calibration.batch_size, set model.offload=true "
                "(quantize) or use --device-map auto (eval/serve)")
    return None


def _debug_requested(args) -> bool:
    import os

    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def build_parser() -> argparse.ArgumentParser:
    from llmquant import __version__

    parser = _Parser(
        prog="llmquant",
        description="Nested-lattice quantization of Hugging Face causal LMs.",
    )
    parser.add_argument("--version", action="version", version=f"llmquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A command whose module is not part of this build is simply absent;
            # any other missing module is a real error and must surface.
            if exc.name == name:
                continue
            raise
        module.register(sub)
    _add_debug_flag(parser, top=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user-facing error (see :func:`user_error_message`) is printed as the single
    line ``llmquant: error: <message>`` on stderr with exit status 2, unless ``--debug`` /
    ``LLMQUANT_DEBUG=1`` asks for the traceback; any other exception is a bug and propagates."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_error_message(exc)
        if message is None or _debug_requested(args):
            raise
        print(f"llmquant: error: {message}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
