"""The ``llmquant`` console script.

Each subcommand lives in its own module under :mod:`llmquant.commands`; a module
exposes ``register(subparsers)`` which adds its parser and sets ``func`` to the
callable that runs it.  Modules are imported only when the CLI is built, never at
package import time.
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


def build_parser() -> argparse.ArgumentParser:
    from llmquant import __version__

    parser = argparse.ArgumentParser(
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
    return parser


def main(argv: list[str] | None = None) -> int:
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
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
