"""llmquant: nested-lattice quantization of Hugging Face causal language models.

Importing this package does nothing beyond defining names: no device is chosen,
no table is built, no optional dependency is imported.
"""

__version__ = "0.1.0"

#: Version of the on-disk checkpoint format (config + safetensors layout).
#: Bump it whenever a saved artifact would be read differently.
FORMAT_VERSION = 1
