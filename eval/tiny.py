"""A tiny byte-level tokenizer and a tiny random Llama, built in code, for tests and demos.

Tokenizer: byte-level BPE with *no merges*: each UTF-8 byte of the text is one token (ids
0..255 map to the 256 printable stand-ins of the GPT-2 byte alphabet), so any string
round-trips exactly.  Three special tokens follow: ``<|endoftext|>`` (256, BOS/EOS/PAD),
``<|im_start|>`` (257), ``<|im_end|>`` (258).  The chat template is ChatML, as in SmolLM2.

Model: ``LlamaForCausalLM`` with hidden 64, 2 layers, 4 heads (2 KV heads), weights drawn
from a ``torch.Generator`` seeded by ``seed`` (the global RNG is not used).
"""

from __future__ import annotations

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def byte_tokenizer(model_max_length: int = 256):
    """A ``PreTrainedTokenizerFast`` with 259 tokens (256 bytes + 3 specials) and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # Order the byte stand-ins by the byte they encode so token id == byte value.
    byte_to_char = _gpt2_byte_map()
    assert set(byte_to_char.values()) == set(alphabet)
    vocab = {byte_to_char[b]: b for b in range(256)}
    for i, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _gpt2_byte_map() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable bytes map to themselves,
    the rest to code points 256+ in byte order)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    mapping = {}
    extra = 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tiny_llama(vocab_size: int = 259, seed: int = 0, max_position_embeddings: int = 256, hidden_size: int = 64):
    """A 2-layer random ``LlamaForCausalLM`` (float32, eval mode) seeded by ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=256,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()
