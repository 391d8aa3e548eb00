"""The distribution ships what the repository holds, and importing it has no side effects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_folders() -> dict[str, str]:
    """Map package name -> folder for every folder with an __init__.py under the mapped roots."""
    roots = _pyproject()["tool"]["setuptools"]["package-dir"]
    found = {}
    for pkg, folder in roots.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(base).parts
            name = ".".join((pkg, *rel))
            found[name] = str(init.parent.relative_to(ROOT))
    return found


def test_every_package_folder_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    folders = _package_folders()
    missing = sorted(set(folders) - listed)
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"
    stale = sorted(listed - set(folders))
    assert not stale, f"pyproject.toml lists packages with no folder: {stale}"


def test_kernels_and_eval_are_subpackages():
    import llmquant.eval
    import llmquant.kernels

    assert Path(llmquant.kernels.__file__).parent.name == "kernels"
    assert Path(llmquant.eval.__file__).parent.name == "eval"


def test_cli_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "llmquant.cli", "--help"], check=False, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for command in ("theory", "bench", "quantize", "eval", "run"):
        assert command in out.stdout


def test_import_has_no_side_effects():
    """Importing every module loads no optional backend and touches no CUDA device."""
    code = r"""
import importlib, pkgutil, sys
import llmquant
mods = [m.name for m in pkgutil.walk_packages(llmquant.__path__, "llmquant.")]
for name in ("llmquant.kernels", "llmquant.eval"):
    pkg = importlib.import_module(name)
    mods += [m.name for m in pkgutil.walk_packages(pkg.__path__, name + ".")]
try:
    import triton  # noqa: F401  (kernel modules define @triton.jit functions and need it)
    has_triton = True
except ImportError:
    has_triton = False
for m in mods:
    try:
        importlib.import_module(m)
    except ModuleNotFoundError as exc:
        if exc.name == "triton" and not has_triton:
            continue
        raise
import torch
bad = [m for m in ("lm_eval", "fastapi", "uvicorn", "openai") if m in sys.modules]
print("BAD", bad, "CUDA_INIT", torch.cuda.is_initialized())
"""
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "BAD [] CUDA_INIT False" in out.stdout, out.stdout
