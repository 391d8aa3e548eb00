"""Where the quantized linears sit inside a decoder layer, via the architecture adapter.

Roles ``q, k, v, o, gate, up, down`` (see :mod:`llmquant.models.adapters`).  A role whose
module wraps an inner linear with an online input rotation (``InputRotatedLinear``: has
``.rotation`` and ``.linear``) is quantized through its ``.linear``, so both the Hessian and the
activation quantizer see the rotated input.

Linears that read the same tensor share one activation quantizer (:data:`INPUT_GROUPS`), so
the shared input is quantized once per forward.
"""

from __future__ import annotations

from torch import nn

LINEAR_ROLES = ("q", "k", "v", "o", "gate", "up", "down")
#: roles reading the same input tensor (attention input, attention output, MLP input, MLP hidden)
INPUT_GROUPS = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))


def _is_wrapper(m: nn.Module) -> bool:
    return hasattr(m, "rotation") and isinstance(getattr(m, "linear", None), nn.Module)


def get_linear(layer: nn.Module, adapter, role: str) -> nn.Module:
    """The (possibly quantized) linear of ``role`` in ``layer``, unwrapping online input rotations."""
    m = adapter.get(layer, role)
    return m.linear if _is_wrapper(m) else m


def set_linear(layer: nn.Module, adapter, role: str, module: nn.Module) -> None:
    """Replace the linear of ``role`` (the inner one when it is wrapped by an online rotation)."""
    m = adapter.get(layer, role)
    if _is_wrapper(m):
        m.linear = module
    else:
        adapter.set(layer, role, module)


def present_roles(layer: nn.Module, adapter) -> list[str]:
    return [r for r in LINEAR_ROLES if adapter.roles.get(r) is not None]


def linear_shapes(model: nn.Module, adapter) -> dict[str, tuple[int, int]]:
    """``"layers.<i>.<role>" -> (out_features, in_features)`` for all decoder-layer linears."""
    shapes = {}
    for i, layer in enumerate(adapter.layers(model)):
        for role in present_roles(layer, adapter):
            lin = get_linear(layer, adapter, role)
            shapes[f"layers.{i}.{role}"] = (int(lin.out_features), int(lin.in_features))
    return shapes


def roles_with_act_quantizers(roles, activations_cfg):
    """``(role, act_q)`` for each role in ``roles``, in :data:`INPUT_GROUPS` order: the roles of one group read
    the same tensor, so they share one new activation quantizer (``None`` when ``activations_cfg`` quantizes
    nothing)."""
    from llmquant.quant.activations import row_quantizer_from_config

    for group in INPUT_GROUPS:
        present = [role for role in group if role in roles]
        if present:
            act_q = row_quantizer_from_config(activations_cfg)
            for role in present:
                yield role, act_q


def build_quantized_shell(layer: nn.Module, adapter, specs: dict[str, dict], cfg) -> None:
    """Replace the linears of ``layer`` by empty quantized modules described by ``specs``
    (role -> :func:`~llmquant.quant.weights.module_spec`), attach the activation quantizers
    (shared per input group) and the KV quantizers from ``cfg``; buffers are then filled by
    ``load_state_dict``."""
    from llmquant.quant.kv import attach_kv_quantizers
    from llmquant.quant.weights import empty_like_spec

    for role, act_q in roles_with_act_quantizers(specs, cfg.activations):
        module = empty_like_spec(specs[role])
        module.act_q = act_q
        set_linear(layer, adapter, role, module)
    attach_kv_quantizers(layer, adapter, cfg.kv)
