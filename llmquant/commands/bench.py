"""``llmquant bench {gaussian,kernels,serve,memory,decode}``: benchmarks, each owned by its library module.

Each target module exposes ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import importlib

#: bench target -> (module, one-line help)
TARGETS = {
    "gaussian": ("llmquant.theory.gaussian_bench", "lattice codes on iid Gaussian matrix products vs Gamma(R)"),
    "kernels": ("llmquant.kernels.bench",
                "lattice GEMM kernels vs torch FP16/BF16 matmul (--sass: static SASS cost, no GPU)"),
    "serve": ("llmquant.serve.load_test", "concurrent clients against a running llmquant server"),
    "memory": ("llmquant.eval.memory", "bytes a model and its KV cache hold, peak RSS and decode s/token"),
    "decode": ("llmquant.eval.decode_speed", "end-to-end decode tokens/s of quantized models vs FP16 (random weights)"),
}


def register(sub) -> None:
    parser = sub.add_parser("bench", help="benchmarks (gaussian, kernels, serve, memory, decode)")
    targets = parser.add_subparsers(dest="bench_target", metavar="TARGET")
    for name, (module_name, help_text) in TARGETS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        p = targets.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
