"""llmquant: nested-lattice quantization of Hugging Face causal language models.

Importing this package does nothing beyond defining names: no device is chosen,
no table is built, no optional dependency is imported.  The one exception is a
``sys.meta_path`` entry (below, no import) that registers the
``llmquant`` quantizer with transformers when transformers loads its quantizer table,
so that ``import llmquant`` makes ``AutoModelForCausalLM.from_pretrained(CKPT)`` work.
"""

__version__ = "0.1.0"

#: Version of the on-disk checkpoint format (config + safetensors layout).
#: Bump it whenever a saved artifact would be read differently.
FORMAT_VERSION = 1


# --- transformers registration hook (see llmquant.hf for why it lives here) -----------------------------
# Arms a post-import hook: when ``transformers.quantizers.auto`` (transformers' table of quantization methods)
# is imported, right after its body has run, ``llmquant.hf.register()`` adds the "llmquant" method and the hook
# removes itself.  If that module is already loaded, registration happens now.  Cost at ``import llmquant``:
# one class, one list insert, no import; every later import pays one string comparison until the hook fires.
import sys as _sys

_HF_TARGET = "transformers.quantizers.auto"


class _HfLoader:
    """Wraps the real loader of ``transformers.quantizers.auto``: run the module, then register."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _uninstall_hf_hook()
        from llmquant.hf import register

        register()

    def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
        return getattr(self._inner, name)


class _HfFinder:
    """``sys.meta_path`` finder answering only for ``transformers.quantizers.auto`` (with the real spec, its
    loader wrapped)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _HF_TARGET:
            return None
        for finder in _sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HfLoader(spec.loader)
                return spec
        return None


_HF_FINDER = _HfFinder()


def _install_hf_hook() -> None:
    """Register with transformers now if its quantizer table is loaded, else arm the hook (idempotent)."""
    if _HF_TARGET in _sys.modules:
        from llmquant.hf import register

        register()
    elif _HF_FINDER not in _sys.meta_path:
        _sys.meta_path.insert(0, _HF_FINDER)


def _uninstall_hf_hook() -> None:
    while _HF_FINDER in _sys.meta_path:
        _sys.meta_path.remove(_HF_FINDER)


_install_hf_hook()
