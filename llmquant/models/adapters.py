"""Architecture knowledge as data: a role -> module-name map per Hugging Face model type.

Roles (module paths relative to the CausalLM, or to one decoder layer for ``layer_*`` roles):

    embed, layers, final_norm, lm_head, rotary          model-level modules
    q, k, v, o, gate, up, down                          linears inside a decoder layer
    attn                                                the attention module (holds the Q/K rotation)
    attn_in_norm, mlp_in_norm                           norms whose gains fold into q/k/v and gate/up
    attn_out_norm, mlp_out_norm                         Gemma-style post-norms on o/down outputs (or None)
    q_norm, k_norm                                      per-head norms before RoPE (Qwen3, Gemma3) or None

``norm_offset`` is the constant added to a norm's weight to get its gain (Gemma: ``x * (1 + w)``, so 1.0;
Llama-family: ``x * w``, 0.0).  ``norm_identity_weight`` is the weight value that makes the gain 1.
"""

from __future__ import annotations

from dataclasses import dataclass

_LLAMA_LIKE = {
    "embed": "model.embed_tokens",
    "layers": "model.layers",
    "final_norm": "model.norm",
    "lm_head": "lm_head",
    "rotary": "model.rotary_emb",
    "attn": "self_attn",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
    "attn_in_norm": "input_layernorm",
    "mlp_in_norm": "post_attention_layernorm",
    "attn_out_norm": None,
    "mlp_out_norm": None,
    "q_norm": None,
    "k_norm": None,
}

#: model_type -> (role map, norm_offset, activation, notes)
ARCHITECTURES: dict[str, dict] = {
    "llama": {"roles": _LLAMA_LIKE, "norm_offset": 0.0, "act": "silu", "cls": "LlamaForCausalLM"},
    "mistral": {"roles": _LLAMA_LIKE, "norm_offset": 0.0, "act": "silu", "cls": "MistralForCausalLM"},
    "qwen2": {"roles": _LLAMA_LIKE, "norm_offset": 0.0, "act": "silu", "cls": "Qwen2ForCausalLM"},
    "qwen3": {
        "roles": {**_LLAMA_LIKE, "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"},
        "norm_offset": 0.0,
        "act": "silu",
        "cls": "Qwen3ForCausalLM",
    },
    "gemma3_text": {
        "roles": {
            **_LLAMA_LIKE,
            "mlp_in_norm": "pre_feedforward_layernorm",
            "attn_out_norm": "post_attention_layernorm",
            "mlp_out_norm": "post_feedforward_layernorm",
            "q_norm": "self_attn.q_norm",
            "k_norm": "self_attn.k_norm",
        },
        "norm_offset": 1.0,
        "act": "gelu_pytorch_tanh",
        "cls": "Gemma3ForCausalLM",
    },
}

#: Short names accepted by tiny_random_model and listed in errors.
SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral", "gemma3")
_ALIASES = {"gemma3": "gemma3_text"}


@dataclass(frozen=True)
class ArchAdapter:
    """Role map of one architecture (see module docstring)."""

    model_type: str
    roles: dict
    norm_offset: float
    act: str

    @property
    def norm_identity_weight(self) -> float:
        return 1.0 - self.norm_offset

    def get(self, root, role: str):
        """The module for ``role`` under ``root`` (the model for model roles, a decoder layer for layer roles)."""
        path = self.roles[role]
        if path is None:
            return None
        return root.get_submodule(path)

    def layers(self, model):
        return list(model.get_submodule(self.roles["layers"]))

    def set(self, root, role: str, module) -> None:
        """Replace the module at ``role`` under ``root``."""
        parent_path, _, name = self.roles[role].rpartition(".")
        parent = root.get_submodule(parent_path) if parent_path else root
        setattr(parent, name, module)


def _model_type(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    if isinstance(config, str):
        return config
    mt = getattr(config, "model_type", None)
    if mt is None:
        raise TypeError(f"expected a transformers model, config or model_type string, got {type(model_or_config)}")
    return mt


def get_adapter(model_or_config) -> ArchAdapter:
    """Adapter for a model, its config, or an architecture name / model_type string.

    Raises ValueError naming the supported architectures.  The short name ``"gemma3"`` means the text model
    (``gemma3_text``); a *config* of type ``gemma3`` is the multimodal Gemma3ForConditionalGeneration,
    which is not supported (its language model is reachable as a Gemma3ForCausalLM).
    """
    mt = _model_type(model_or_config)
    if isinstance(model_or_config, str):
        mt = _ALIASES.get(mt, mt)
    if mt not in ARCHITECTURES:
        hint = ""
        if mt == "gemma3":
            hint = " (multimodal Gemma3ForConditionalGeneration: load its text model as Gemma3ForCausalLM)"
        from llmquant.errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            f"unsupported architecture {mt!r}{hint}; supported: {', '.join(SUPPORTED_ARCHITECTURES)} "
            f"(model_type {', '.join(ARCHITECTURES)})"
        )
    spec = ARCHITECTURES[mt]
    return ArchAdapter(model_type=mt, roles=dict(spec["roles"]), norm_offset=spec["norm_offset"], act=spec["act"])
