"""QuaRot-style rotation plan applied to a floating-point causal LM (computational invariance).

Row-vector convention (``nn.Linear``: ``y = x W^T + b``).  Steps, in order:

1. **Untie** ``lm_head`` from the embeddings when tied (they receive different transforms below).
2. **Fold norm gains** ``g = norm_offset + w`` of the norm in front of each linear into its input columns,
   ``W <- W diag(g)``, and set the norm to gain 1: ``attn_in_norm -> q, k, v``; ``mlp_in_norm -> gate, up``;
   ``final_norm -> lm_head``.  An RMSNorm without gain commutes with any orthogonal ``Q``
   (``rms(x Q) = rms(x)``), which is what makes step 3 exact.
3. **Residual rotation** ``Q = diag(s) H_d`` (d = hidden, seed ``seed``): every residual-stream vector ``h``
   becomes ``h Q``.  ``E <- E Q``; ``W <- W Q`` for q/k/v/gate/up and lm_head; ``W <- Q^T W``, ``b <- b Q``
   for o/down.
4. **Online down_proj rotation** ``Q_d`` (intermediate size, seed ``seed + 1``): ``W_down <- W_down Q_d`` and
   ``down_proj`` becomes ``InputRotatedLinear(Q_d, down_proj)`` which computes ``x Q_d`` online.
5. **V/O per-head rotation** ``Q_h`` (head_dim, seed ``seed + 2``), fused offline: each value head
   ``v <- v Q_h`` (``W_v[head] <- Q_h^T W_v[head]``, ``b_v[head] <- b_v[head] Q_h``) and each o_proj input
   block ``W_o[:, head] <- W_o[:, head] Q_h``.  Attention mixes values of one head linearly, so
   ``softmax(.) (V Q_h) Q_h^T = softmax(.) V``.  GQA is fine: one ``Q_h`` for all heads.
6. **Q/K rotation** ``Q_k`` (head_dim, seed ``seed + 3``) after RoPE: ``attn.llmquant_qk_rotation`` holds it
   and the ``llmquant`` attention function (:mod:`llmquant.rotation.attention`) applies it to queries
   and keys; ``(q Q_k)(k Q_k)^T = q k^T``.  ``attn.llmquant_k_quant`` / ``llmquant_v_quant`` are set to None
   (slots for the KV-cache quantizers).

**Gemma3.**  Gains are ``1 + w`` (norm_offset 1; identity weight 0).  ``input_layernorm`` and
``pre_feedforward_layernorm`` precede linears and fold as above.  ``post_attention_layernorm`` and
``post_feedforward_layernorm`` are applied to the *outputs* of o_proj / down_proj, between the linear and
the residual add: ``r <- r + norm(o W_o^T) diag(1 + w)``.  Rotating o_proj's output (``W_o <- Q^T W_o``) would
need ``norm(y Q) diag(1+w) = norm(y) diag(1+w) Q``, i.e. ``diag(1+w)`` to commute with ``Q``, which
fails unless the gain is constant; and the gain cannot be folded into o_proj either, because the RMS is
taken before the gain.  So for Gemma3 o_proj / down_proj keep their output basis and the post-norm output
is rotated online: each post-norm becomes ``OutputRotated(norm, Q)`` (one O(d log d) Hadamard per norm,
exact).  Everything else (residual ``Q`` on embeddings, q/k/v/gate/up, lm_head; online down; V/O; Q/K)
applies unchanged; ``q_norm``/``k_norm`` act per head on q_proj/k_proj outputs, which the residual
rotation leaves unchanged, and Q/K rotation happens after them and RoPE.  The embedding scale
``sqrt(d)`` is a scalar and commutes with ``Q``.

**Norm gains** (``norm_gains``, config ``rotation.norm_gains``).  ``fold`` (QuaRot, the default) is steps 2-3.
``online`` keeps every gain in its norm, leaves the residual stream (embeddings, o/down outputs, ``lm_head``,
post-norms) unrotated, and rotates each pre-norm's *output* online: ``attn_in_norm`` / ``mlp_in_norm`` become
``OutputRotated(norm, Q)`` (one O(d log d) Hadamard each) and ``W <- W Q`` for q/k/v and gate/up.  Why: folding
a gain with a large range makes ``W diag(g)`` put its energy in channels whose normalized inputs are tiny; any
code's (near-isotropic) error is then amplified relative to the output by ``sqrt(misalignment)``,
``misalignment = (||W'||^2 tr(C) / K) / tr(W' C W'^T)``.  Measured on Gemma-3-270M (gains 1 + w from 0 to 234
within one norm): misalignment 29-333 for folded q/v/up, 1.0-1.4 with the gains on the activation side.

The :class:`RotationPlan` (JSON-serialisable) records all seeds and choices; :func:`install_rotation_modules`
rebuilds the module structure from a plan (for loading a saved rotated state_dict).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from llmquant.models.adapters import get_adapter
from llmquant.rotation.attention import ensure_registered, llmquant_implementation_for
from llmquant.rotation.online import InputRotatedLinear, OutputRotated
from llmquant.rotation.random_hadamard import HadamardRotation, random_hadamard

PLAN_VERSION = 1


@dataclass
class RotationPlan:
    """What :func:`rotate_model` did.  Rotation entries are ``{"n": size, "seed": seed}`` or None."""

    model_type: str
    seed: int
    residual: dict | None
    online_down: dict | None
    v_o: dict | None
    qk: dict | None
    folded_norms: bool = True
    untied_embeddings: bool = False
    output_rotated: list[str] = field(default_factory=list)
    attn_implementation: str | None = None
    #: ``{"n": hidden, "seed": seed}`` when the norm gains stay in the pre-norms and each pre-norm's output is
    #: rotated online (``norm_gains: online``, see the module docstring); None = gains folded (QuaRot)
    pre_norm_online: dict | None = None
    version: int = PLAN_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> RotationPlan:
        if d.get("version") != PLAN_VERSION:
            raise ValueError(f"RotationPlan version {d.get('version')!r} is not supported (expected {PLAN_VERSION})")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RotationPlan fields {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**d)


NORM_GAINS = ("fold", "online")


def _options(seed, online_down, v_o, qk, norm_gains):
    """Accept either explicit arguments or a config object/dict with those fields as ``seed``."""
    if isinstance(seed, dict) or (seed is not None and not isinstance(seed, int) and hasattr(seed, "seed")):
        get = seed.get if isinstance(seed, dict) else (lambda k, d: getattr(seed, k, d))
        seed, online_down, v_o, qk, norm_gains = (int(get("seed", 0)), bool(get("online_down", online_down)),
                                                  bool(get("v_o", v_o)), bool(get("qk", qk)),
                                                  str(get("norm_gains", norm_gains)))
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int (or a rotation config with a 'seed' field), got {type(seed).__name__}")
    if norm_gains not in NORM_GAINS:
        raise ValueError(f"norm_gains must be one of {NORM_GAINS}, got {norm_gains!r}")
    return seed, online_down, v_o, qk, norm_gains


def _dims(model):
    cfg = model.config
    attn0 = get_adapter(model).get(get_adapter(model).layers(model)[0], "attn")
    head_dim = int(getattr(attn0, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    return int(cfg.hidden_size), int(cfg.intermediate_size), head_dim


@torch.no_grad()
def _set(param: nn.Parameter, value64: torch.Tensor) -> None:
    param.copy_(value64.to(dtype=param.dtype, device=param.device))


@torch.no_grad()
def _untie(model, ad) -> bool:
    emb, head = ad.get(model, "embed"), ad.get(model, "lm_head")
    tied = head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr()
    if tied:
        head.weight = nn.Parameter(emb.weight.detach().clone())
    # Reloading must not re-tie them (transformers ties from the config flag).
    model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = {} if isinstance(model._tied_weights_keys, dict) else []
    return tied


@torch.no_grad()
def _fold_norm(norm, linears, offset: float) -> None:
    g = (offset + norm.weight.detach().to(torch.float64)).cpu()
    for lin in linears:
        w = lin.weight.detach().to(torch.float64).cpu()
        _set(lin.weight, w * g[None, :])
    norm.weight.fill_(1.0 - offset)


#: Up to this order the offline fusion ``W @ Q`` uses a dense GEMM (BLAS beats the memory-bound butterfly
#: on CPU); above it the [n, n] matrix would be too large and the fast transform is used.
DENSE_FUSION_MAX = 4096


class _RightMul:
    """``w @ Q`` in the work dtype, with the dense ``Q`` built once."""

    def __init__(self, rot: HadamardRotation, dtype: torch.dtype):
        self.rot = rot
        self.dense = rot.matrix(dtype) if rot.n <= DENSE_FUSION_MAX else None

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w @ self.dense if self.dense is not None else self.rot.apply(w)


def _work_dtype(model) -> torch.dtype:
    """float64 for float64 models (exact-invariance tests), float32 otherwise: fusing in fp32 adds ~1e-7
    relative error, far below fp32/bf16 storage rounding, and halves the time (O(layers * d^2 * rows))."""
    return torch.float64 if any(p.dtype == torch.float64 for p in model.parameters()) else torch.float32


@torch.no_grad()
def install_rotation_modules(model, plan: RotationPlan) -> None:
    """Build the module structure of a rotated model from ``plan`` without touching weights: untie,
    wrap down_proj / Gemma post-norms, attach Q/K rotations and KV slots, switch attention implementation.
    Used by :func:`rotate_model` and by checkpoint loaders before ``load_state_dict``."""
    ad = get_adapter(model)
    if plan.model_type != ad.model_type:
        raise ValueError(f"plan is for {plan.model_type!r}, model is {ad.model_type!r}")
    if getattr(model, "llmquant_rotation_plan", None) is not None:
        raise ValueError("model is already rotated (model.llmquant_rotation_plan is set); load a fresh model")
    if plan.untied_embeddings or plan.residual is not None:
        _untie(model, ad)
    for layer in ad.layers(model):
        if plan.pre_norm_online is not None:
            for role in ("attn_in_norm", "mlp_in_norm"):
                ad.set(layer, role, OutputRotated(ad.get(layer, role), HadamardRotation.from_state(plan.pre_norm_online)))
        if plan.online_down is not None:
            ad.set(layer, "down", InputRotatedLinear(HadamardRotation.from_state(plan.online_down), ad.get(layer, "down")))
        for role in ("attn_out_norm", "mlp_out_norm"):
            if plan.residual is not None and ad.roles[role] is not None:
                ad.set(layer, role, OutputRotated(ad.get(layer, role), HadamardRotation.from_state(plan.residual)))
        attn = ad.get(layer, "attn")
        attn.llmquant_qk_rotation = HadamardRotation.from_state(plan.qk) if plan.qk is not None else None
        attn.llmquant_k_quant = None
        attn.llmquant_v_quant = None
    if plan.attn_implementation is not None:
        ensure_registered()
        model.set_attn_implementation(plan.attn_implementation)
        if model.config._attn_implementation != plan.attn_implementation:
            raise RuntimeError(
                f"transformers refused attention implementation {plan.attn_implementation!r} "
                f"(model reports {model.config._attn_implementation!r})"
            )
    dev = next(model.parameters()).device
    model.to(dev)  # new sign buffers are created on CPU
    model.llmquant_rotation_plan = plan
    model.config.llmquant_rotation = plan.to_dict()


@torch.no_grad()
def rotate_model(model, seed=0, online_down: bool = True, v_o: bool = True, qk: bool = True,
                 norm_gains: str = "fold") -> RotationPlan:
    """Rotate ``model`` in place (see module docstring) and return the :class:`RotationPlan`.

    ``seed`` is an int, or a rotation config (dict or object with fields seed/online_down/v_o/qk/norm_gains).
    ``norm_gains``: "fold" (QuaRot: gains folded into q/k/v, gate/up, lm_head; residual rotated offline) or
    "online" (gains stay; each pre-norm output rotated online, see "Norm gains" in the module docstring).  Weight
    arithmetic is done on CPU in float64 for float64 models and in float32 otherwise (see ``_work_dtype``),
    and written back in each parameter's dtype/device.
    """
    seed, online_down, v_o, qk, norm_gains = _options(seed, online_down, v_o, qk, norm_gains)
    online_norms = norm_gains == "online"
    ad = get_adapter(model)
    if getattr(model, "llmquant_rotation_plan", None) is not None:
        raise ValueError("model is already rotated (model.llmquant_rotation_plan is set); load a fresh model")
    d, inter, hd = _dims(model)
    cfg = model.config
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    post_norms = [r for r in ("attn_out_norm", "mlp_out_norm") if ad.roles[r] is not None]
    impl = llmquant_implementation_for(cfg._attn_implementation) if qk else None
    plan = RotationPlan(
        model_type=ad.model_type,
        seed=seed,
        residual=None if online_norms else {"n": d, "seed": seed},
        online_down={"n": inter, "seed": seed + 1} if online_down else None,
        v_o={"n": hd, "seed": seed + 2} if v_o else None,
        qk={"n": hd, "seed": seed + 3} if qk else None,
        untied_embeddings=False,
        output_rotated=[ad.roles[r] for r in post_norms] if not online_norms else
        [ad.roles[r] for r in ("attn_in_norm", "mlp_in_norm")],
        attn_implementation=impl,
        pre_norm_online={"n": d, "seed": seed} if online_norms else None,
    )

    layers = ad.layers(model)
    if not online_norms:
        plan.untied_embeddings = _untie(model, ad)
        off = ad.norm_offset
        for layer in layers:
            _fold_norm(ad.get(layer, "attn_in_norm"), [ad.get(layer, r) for r in ("q", "k", "v")], off)
            _fold_norm(ad.get(layer, "mlp_in_norm"), [ad.get(layer, r) for r in ("gate", "up")], off)
        _fold_norm(ad.get(model, "final_norm"), [ad.get(model, "lm_head")], off)

    wd = _work_dtype(model)

    def _w(mod, name="weight"):
        return getattr(mod, name).detach().to(wd).cpu()

    q = _RightMul(HadamardRotation(d, seed), wd)
    if not online_norms:  # the residual stream itself is rotated
        emb = ad.get(model, "embed")
        _set(emb.weight, q(_w(emb)))
        head = ad.get(model, "lm_head")
        _set(head.weight, q(_w(head)))
    qd = _RightMul(HadamardRotation(inter, seed + 1), wd) if online_down else None
    qh = random_hadamard(hd, seed + 2, wd) if v_o else None
    for layer in layers:
        for r in ("q", "k", "v", "gate", "up"):
            lin = ad.get(layer, r)
            _set(lin.weight, q(_w(lin)))
        for r, post in (("o", "attn_out_norm"), ("down", "mlp_out_norm")):
            lin = ad.get(layer, r)
            w = _w(lin)
            if ad.roles[post] is None and not online_norms:  # Gemma3 rotates after its post-norm (OutputRotated)
                w = q(w.T).T  # Q^T W = (W^T Q)^T
                if lin.bias is not None:
                    _set(lin.bias, q(_w(lin, "bias")[None])[0])
            if r == "down" and qd is not None:
                w = qd(w)
            _set(lin.weight, w)
        if qh is not None:
            v, o = ad.get(layer, "v"), ad.get(layer, "o")
            wv = _w(v).reshape(n_kv, hd, -1)
            _set(v.weight, torch.einsum("ji,hjk->hik", qh, wv).reshape(v.weight.shape))
            if v.bias is not None:
                _set(v.bias, (_w(v, "bias").reshape(n_kv, hd) @ qh).reshape(-1))
            wo = _w(o).reshape(o.weight.shape[0], -1, hd)
            _set(o.weight, (wo @ qh).reshape(o.weight.shape))

    install_rotation_modules(model, plan)
    return plan


def load_rotated_pretrained(path, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load a rotated model written by ``save_pretrained`` (its config carries ``llmquant_rotation``).

    ``from_pretrained`` alone cannot, because the module structure differs (``down_proj.linear``,
    ``llmquant_qk_rotation``...): the model is built from the config, :func:`install_rotation_modules`
    recreates the structure from the plan, and the safetensors state dict is loaded strictly.
    """
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    plan_dict = getattr(config, "llmquant_rotation", None)
    if plan_dict is None:
        raise ValueError(f"{path} holds no rotated model (config.json has no 'llmquant_rotation'); use load_model")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    install_rotation_modules(model, RotationPlan.from_dict(dict(plan_dict)))
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state = {}
    for f in files:
        state.update(load_file(str(path / f)))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
