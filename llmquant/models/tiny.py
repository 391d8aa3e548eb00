"""Tiny random causal LMs from in-code configs, one per supported architecture (tests, no downloads).

Sizes exercise non-power-of-two Hadamard orders: hidden 48 = 12 * 4 or 96 = 12 * 8, intermediate
80 = 20 * 4 or 160 = 20 * 8, head_dim 16; 2 decoder layers; vocab 128; GQA everywhere.  Every parameter is
redrawn from ``torch.Generator().manual_seed(seed)`` (linears ~ N(0, 1/fan_in), embeddings ~ N(0, 1),
biases ~ N(0, 0.1^2), norm gains ~ 1 + N(0, 0.2^2) so that norm folding is exercised), then the model is
cast to ``dtype``.  Feed token ids directly (no tokenizer).
"""

from __future__ import annotations

import torch

from llmquant.models.adapters import SUPPORTED_ARCHITECTURES, get_adapter

VOCAB = 128

#: arch -> (transformers config class name, kwargs, attention implementation)
TINY_CONFIGS: dict[str, tuple[str, dict, str]] = {
    "llama": ("LlamaConfig", {
        "hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 16,
        "intermediate_size": 80, "tie_word_embeddings": True,
    }, "sdpa"),
    "qwen2": ("Qwen2Config", {
        "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2,
        "intermediate_size": 160, "tie_word_embeddings": True,
    }, "sdpa"),
    "qwen3": ("Qwen3Config", {
        "hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": 80, "tie_word_embeddings": False,
    }, "eager"),
    "mistral": ("MistralConfig", {
        "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": 160, "sliding_window": 6, "tie_word_embeddings": False,
    }, "sdpa"),
    "gemma3": ("Gemma3TextConfig", {
        "hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 16,
        "intermediate_size": 80, "sliding_window": 4, "query_pre_attn_scalar": 16,
        "layer_types": ["sliding_attention", "full_attention"], "tie_word_embeddings": True,
    }, "eager"),
}


def tiny_config(arch: str):
    """The transformers config of the tiny ``arch`` model (2 layers, vocab 128)."""
    if arch not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    import transformers

    cls_name, kwargs, _ = TINY_CONFIGS[arch]
    return getattr(transformers, cls_name)(
        vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, **kwargs
    )


@torch.no_grad()
def tiny_random_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation=None):
    """A seeded tiny ``arch`` model in eval mode (see module docstring)."""
    import transformers

    config = tiny_config(arch)
    impl = attn_implementation or TINY_CONFIGS[arch][2]
    cls = getattr(transformers, _causal_lm_class(arch))
    model = cls._from_config(config, attn_implementation=impl)
    g = torch.Generator().manual_seed(int(seed))
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.ndim == 2 and "embed" in name:
            p.copy_(torch.randn(p.shape, generator=g))
        elif p.ndim == 2:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
        elif "norm" in name:
            offset = get_adapter(config).norm_offset
            p.copy_(1.0 - offset + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.to(dtype).eval()


def _causal_lm_class(arch: str) -> str:
    from llmquant.models.adapters import ARCHITECTURES

    return ARCHITECTURES[get_adapter(arch).model_type]["cls"]
