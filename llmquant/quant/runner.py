"""Layer-wise (sequential) calibration and quantization with resume.

Algorithm, for decoder layers ``i = 0 .. L-1`` (memory: one layer plus its activations):

1. Inputs of layer 0 are captured by running the model on the calibration batch with a
   pre-hook that records the layer's hidden states and keyword arguments (position
   embeddings, masks) and stops the forward.
2. FP pass: run layer ``i`` (still floating point) on its inputs; pre-hooks on its linears
   accumulate one Hessian per input group (q/k/v share one, gate/up share one); the outputs
   ``Y_fp`` are kept.
3. Each linear is quantized from its Hessian (GPTQ/LDLQ or RTN) and swapped in, with its
   activation quantizer; the KV quantizers are attached to the attention module.
4. Quantized pass: run the quantized layer on the same inputs -> ``Y_q``; the per-layer
   relative output error ``||Y_q - Y_fp|| / ||Y_fp||`` is logged; ``Y_q`` become the inputs
   of layer ``i + 1`` (errors propagate as at inference time).
5. Resume state (``work_dir``, marked as llmquant's with the ``.llmquant`` marker file): the
   layer's state dict (``layer_XXX.safetensors``), the propagated activations
   (``acts.safetensors``: ``acts.<batch>`` tensors) and ``progress.json`` (config hash, last
   finished layer, module specs, reports) are written atomically (temp file + ``os.replace``,
   progress last).  A rerun with the same config skips the finished layers: it rebuilds
   their quantized modules from the saved specs and state, and restarts from the saved
   activations.  Nothing is unpickled: every file is safetensors or JSON, and each is validated
   before use (names, dtypes and shapes against the rebuilt layer / the captured layer-0
   inputs, finite values, code and beta-index ranges); a damaged file is a ``CheckpointError``
   naming it.  A ``acts.pt`` of an older llmquant is never loaded.

Offload (``offload_device``, config ``model.offload``): for models larger than accelerator memory.
The model lives in CPU memory; :class:`LayerOffloader` moves the non-layer modules (embeddings,
rotary embedding, final norm, ``lm_head``) to the compute device only for step 1, and decoder layer
``i`` only for steps 2-4, moving it back before layer ``i + 1`` comes (at most one layer resident;
its bookkeeping raises otherwise).  Activations, Hessians and the keyword arguments stay on the
compute device, so peak accelerator memory is one layer + its Hessians + the calibration
activations.  The arithmetic is the same as without offload (same device, same ops), so the
quantized model is identical; it ends in CPU memory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from llmquant.quant.guard import GuardPolicy, check_layer, format_flag
from llmquant.quant.hessian import HessianAccumulator
from llmquant.quant.structure import (
    INPUT_GROUPS,
    build_quantized_shell,
    get_linear,
    present_roles,
    roles_with_act_quantizers,
    set_linear,
)

PROGRESS_FILE = "progress.json"
ACTS_FILE = "acts.safetensors"
#: activations file of older versions (a pickle): never loaded, only reported
LEGACY_ACTS_FILE = "acts.pt"


class _StopForward(Exception):
    pass


def _atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


class _PassThrough(nn.Module):
    """Stands in for a decoder layer while :func:`capture_layer_inputs` runs: records the keyword
    arguments the model passes to that layer and returns the hidden states unchanged (no compute).
    The last one stops the forward."""

    def __init__(self, layer: nn.Module, sink: list, last: bool):
        super().__init__()
        self.sink, self.last = sink, last
        # plain attributes some model loops read from their layers (e.g. ``attention_type``)
        for name in ("attention_type", "layer_idx", "is_sliding"):
            if name in vars(layer):
                setattr(self, name, vars(layer)[name])

    def forward(self, *args, **kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        kw["use_cache"] = False
        for name in ("past_key_values", "past_key_value", "cache"):
            if name in kw:
                kw[name] = None
        self.sink.append(kw)
        if self.last:
            raise _StopForward
        return hs


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, adapter, calib: torch.Tensor, batch_size: int,
                         device: torch.device | None = None):
    """Hidden states entering decoder layer 0, and the keyword arguments of *every* decoder layer.

    Returns ``(inps, kws)``: ``inps[b]`` the hidden states of batch ``b`` at layer 0; ``kws[i][b]`` the
    keyword arguments (position embeddings, attention mask, ...) the model passes to layer ``i``.

    Why per layer: models with mixed attention types give each layer its own arguments (Gemma3: local
    RoPE (θ = 1e4) and a sliding-window mask for ``sliding_attention`` layers, global RoPE (θ = 1e6) and
    a full causal mask for ``full_attention`` layers).  Reusing layer 0's arguments for every layer
    calibrates the full-attention layers with the wrong rotary embedding.  The layers are replaced by
    :class:`_PassThrough` stand-ins for the capture, so it costs the embedding and the mask/RoPE
    construction only; identical argument tensors are shared, not copied.
    ``device``: where the token ids go (default: the model's first parameter's device)."""
    layers = adapter.layers(model)
    inps: list[torch.Tensor] = []
    kws: list[list[dict]] = [[] for _ in layers]

    def hook(_mod, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        inps.append(hs.detach())

    container = model.get_submodule(adapter.roles["layers"])
    originals = list(container)
    for i in range(len(originals)):
        container[i] = _PassThrough(originals[i], kws[i], last=i == len(originals) - 1)
    handle = container[0].register_forward_pre_hook(hook, with_kwargs=True)
    device = device if device is not None else _device_of(model)
    try:
        for batch in calib.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
        for i, layer in enumerate(originals):
            container[i] = layer
    if any(len(k) != len(inps) for k in kws):
        raise RuntimeError(
            f"capture_layer_inputs: the model called its decoder layers an unexpected number of times "
            f"({[len(k) for k in kws]} calls for {len(inps)} batches)")
    return inps, kws


class LayerOffloader:
    """Bookkeeping of what is on the compute device during offloaded quantization.

    ``model``'s tensors live on ``home`` (CPU); :meth:`load_outer` / :meth:`release_outer` move the
    modules outside the decoder layers (their own parameters and buffers, tied weights kept tied) to
    ``device`` and back; :meth:`load_layer` / :meth:`release_layer` do the same for one decoder layer.
    ``resident`` is the set of names on the device (``"outer"``, ``"layer.<i>"``); loading a second
    decoder layer while one is resident raises ``RuntimeError``, so at most one layer is ever on the
    device.  ``enabled=False`` makes every call a no-op (no offload).
    """

    def __init__(self, model: nn.Module, layers, device: torch.device | str, *, home: torch.device | str = "cpu",
                 enabled: bool = True):
        self.model = model
        self.layers = layers
        self.device = torch.device(device)
        self.home = torch.device(home)
        self.enabled = enabled
        self.resident: set[str] = set()
        self.moves: list[tuple[str, str]] = []  # (what, device) in order, for logs and tests

    def outer_modules(self) -> list[nn.Module]:
        """Every module of the model that is not inside a decoder layer (the model itself included)."""
        inside = {id(m) for layer in self.layers for m in layer.modules()}
        return [m for m in self.model.modules() if id(m) not in inside]

    def _move(self, what: str, modules, device: torch.device) -> None:
        """Move the *own* parameters and buffers of ``modules`` to ``device`` (``param.data`` is replaced,
        so the Parameter objects, and with them tied weights and optimizer-free references, stay)."""
        for m in modules:
            for p in m.parameters(recurse=False):
                if p.device != device:
                    p.data = p.data.to(device)
            for name, b in list(m.named_buffers(recurse=False)):
                if b is not None and b.device != device:
                    setattr(m, name, b.to(device))
        self.moves.append((what, str(device)))

    def home_all(self) -> None:
        """Put the whole model on ``home`` (start of an offloaded run)."""
        if self.enabled:
            self._move("all", list(self.model.modules()), self.home)
            self.resident.clear()

    def load_outer(self) -> None:
        if self.enabled:
            self._move("outer", self.outer_modules(), self.device)
            self.resident.add("outer")

    def release_outer(self) -> None:
        if self.enabled:
            self._move("outer", self.outer_modules(), self.home)
            self.resident.discard("outer")

    def load_layer(self, i: int) -> None:
        if not self.enabled:
            return
        others = [r for r in self.resident if r.startswith("layer.")]
        if others:
            raise RuntimeError(f"LayerOffloader: loading layer {i} while {others} is still on {self.device}")
        self._move(f"layer.{i}", list(self.layers[i].modules()), self.device)
        self.resident.add(f"layer.{i}")

    def release_layer(self, i: int) -> None:
        if self.enabled:
            self._move(f"layer.{i}", list(self.layers[i].modules()), self.home)
            self.resident.discard(f"layer.{i}")


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _run_layer(layer, inps, kws):
    outs = []
    for x, kw in zip(inps, kws):
        y = layer(x, **kw)
        outs.append((y[0] if isinstance(y, tuple) else y).detach())
    return outs


def _rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x.double() - y.double()).pow(2).sum()) for x, y in zip(a, b))
    den = sum(float(y.double().pow(2).sum()) for y in b)
    return (num / den) ** 0.5 if den > 0 else 0.0


def _clear_memos(layer: nn.Module) -> None:
    for m in layer.modules():
        if hasattr(m, "clear_memo"):
            m.clear_memo()


@torch.no_grad()
def quantize_layers(
    model: nn.Module,
    cfg,
    calib: torch.Tensor,
    *,
    work_dir: str | Path | None = None,
    config_hash: str = "",
    progress: bool = True,
    on_layer_done: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = print,
    offload_device: str | torch.device | None = None,
) -> dict:
    """Quantize every decoder layer of ``model`` in place (see module docstring).

    ``calib``: LongTensor ``[n_samples, seq_len]``.  ``offload_device``: None = compute where the model
    is; a device = keep the model on the CPU and move one decoder layer at a time there (see "Offload"
    in the module docstring; the model ends on the CPU).  ``on_layer_done(i)`` is called after layer
    ``i`` and its resume state are written (a test hook; raising in it simulates a crash).
    Returns ``{"specs": {i: {role: spec}}, "layers": [per-layer report], "resumed_layers": [...],
    "seconds": float}``.
    """
    from llmquant.models.adapters import get_adapter
    from llmquant.quant.kv import attach_kv_quantizers
    from llmquant.quant.weights import module_spec, quantize_linear, weight_betas

    t0 = time.perf_counter()
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    work = Path(work_dir) if work_dir is not None else None
    specs: dict[int, dict[str, dict]] = {}
    reports: list[dict] = []
    start = 0
    state = None
    if work is not None and (work / PROGRESS_FILE).is_file():
        state = _read_progress(work, len(layers))
        if state.get("config_hash") != config_hash:
            from llmquant.quant.checkpoint import CheckpointError

            raise CheckpointError(
                f"work dir {work} holds a run of a different config (hash {state.get('config_hash')} != "
                f"{config_hash}); delete it or choose another --out"
            )
    offload = LayerOffloader(model, layers, offload_device if offload_device is not None else "cpu",
                             enabled=offload_device is not None)
    offload.home_all()
    compute = offload.device if offload.enabled else _device_of(model)
    offload.load_outer()
    try:
        inps, kws = capture_layer_inputs(model, adapter, calib, cfg.calibration.batch_size, device=compute)
    finally:
        offload.release_outer()
    resumed = []
    if state is not None and state["done"] >= 0:
        for i in range(state["done"] + 1):
            layer_specs = state["specs"][str(i)]
            _load_layer_state(work, i, layers[i], adapter, layer_specs, cfg, _device_of(model))
            specs[i] = layer_specs
            resumed.append(i)
        reports = state["reports"]
        inps = _load_acts(work, inps, compute)
        start = state["done"] + 1
        if log:
            log(f"resuming after layer {state['done']} from {work}")
    betas = (weight_betas(cfg.weights) if cfg.weights.method == "lattice" and cfg.weights.code == "voronoi"
             else None)
    guard = GuardPolicy.from_config(getattr(cfg, "guard", None))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(layers), initial=start, desc="quantize layers", unit="layer")
    if start < len(layers):
        _check_finite(inps, start, adapter, "input")
    for i in range(start, len(layers)):
        tl = time.perf_counter()
        layer = layers[i]
        offload.load_layer(i)
        roles = present_roles(layer, adapter)
        accs: dict[str, HessianAccumulator] = {}
        handles = []
        if cfg.weights.method != "none" and cfg.weights.algorithm == "gptq":
            for group in INPUT_GROUPS:
                members = [r for r in group if r in roles]
                if not members:
                    continue
                lin = get_linear(layer, adapter, members[0])
                acc = HessianAccumulator(lin.in_features, device=_device_of(lin))
                for r in members:
                    accs[r] = acc

                def hook(_m, args, acc=acc):
                    acc.add(args[0])

                handles.append(lin.register_forward_pre_hook(hook))
        try:
            outs_fp = _run_layer(layer, inps, kws[i])
        finally:
            for h in handles:
                h.remove()
        _check_finite(outs_fp, i, adapter, "output of the floating-point layer")
        layer_specs: dict[str, dict] = {}
        lin_report = {}
        lin_diag = {}
        damping = {}  # roles whose Cholesky needed more damping than weights.percdamp
        if cfg.weights.method != "none":
            for role, act_q in roles_with_act_quantizers(roles, cfg.activations):
                lin = get_linear(layer, adapter, role)
                h = accs[role].hessian() if role in accs else None
                mu = accs[role].mean() if role in accs and cfg.weights.bias_correction else None
                qmod, info = quantize_linear(lin, h, cfg.weights, act_q=act_q, betas=betas, mean=mu)
                qmod.to(_device_of(lin))
                set_linear(layer, adapter, role, qmod)
                layer_specs[role] = module_spec(qmod)
                lin_report[role] = info.get("rel_err")
                if "diag" in info:
                    lin_diag[role] = info["diag"]
                    if role in accs:
                        hm = accs[role]
                        lin_diag[role]["mean_energy_frac"] = float(hm.mean().double().pow(2).sum()
                                                                   / h.double().trace().clamp_min(1e-30))
                        lin_diag[role]["bias_correction"] = mu is not None
                if info.get("damping_retries"):
                    damping[role] = {"percdamp": info["percdamp"], "retries": info["damping_retries"]}
                    if log:
                        log(f"layer {i} {role}: Cholesky retried with damping {info['percdamp']:g}")
        attach_kv_quantizers(layer, adapter, cfg.kv)
        outs_q = _run_layer(layer, inps, kws[i])
        _check_finite(outs_q, i, adapter, "output of the quantized layer")
        _clear_memos(layer)
        offload.release_layer(i)
        err = _rel_err(outs_q, outs_fp)
        rep = {"layer": i, "rel_out_err": err, "linear_rel_err": lin_report, "seconds": time.perf_counter() - tl}
        if damping:
            rep["cholesky_damping"] = damping
        if lin_diag:
            rep["linear_diag"] = lin_diag
        rep["guard"] = check_layer(rep, reports, guard)
        for flag in rep["guard"]:
            _warn(format_flag(flag), bar, log)
        reports.append(rep)
        specs[i] = layer_specs
        inps = outs_q
        del outs_fp
        if work is not None:
            _save_progress(work, layer, i, inps, specs, reports, config_hash)
        if log and not progress:
            log(f"layer {i}: rel. output error {err:.4f}")
        if bar is not None:
            bar.set_postfix(rel_err=f"{err:.4f}")
            bar.update(1)
        if on_layer_done is not None:
            on_layer_done(i)
    if bar is not None:
        bar.close()
    warnings = [f for r in reports for f in r.get("guard", [])]
    return {"specs": specs, "layers": reports, "resumed_layers": resumed, "warnings": warnings,
            "seconds": time.perf_counter() - t0}


def _warn(line: str, bar, log) -> None:
    """A guard line shown during the run (through tqdm when a bar is active, so the bar is not torn)."""
    if bar is not None:
        bar.write(line)
    elif log:
        log(line)


def _check_finite(tensors: list[torch.Tensor], i: int, adapter, where: str) -> None:
    """Raise :class:`~llmquant.errors.NumericsError` naming decoder layer ``i`` when a calibration
    activation of ``tensors`` (one per batch) has NaN / Inf values."""
    bad = [b for b, t in enumerate(tensors) if not bool(torch.isfinite(t).all())]
    if bad:
        from llmquant.errors import NumericsError

        name = f"{adapter.roles.get('layers', 'layers')}.{i}"
        raise NumericsError(
            f"NaN/Inf in the calibration activations at the {where} of decoder layer {i} ({name}), "
            f"calibration batches {bad[:5]}; check model.dtype (float16 overflows: use float32 or bfloat16), "
            "the model weights, and the quantizer settings"
        )


def _resume_error(work: Path, name: str, what: str):
    from llmquant.quant.checkpoint import CheckpointError

    return CheckpointError(f"{work / name}: {what}; the resume state is damaged: delete {work} "
                           "to quantize from the start")


def _read_progress(work: Path, n_layers: int) -> dict:
    """``progress.json``, checked: a JSON object whose ``done`` is a finished layer index in
    ``[-1, n_layers)``, with a module spec mapping for every finished layer and a list of reports."""
    try:
        state = json.loads((work / PROGRESS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _resume_error(work, PROGRESS_FILE, f"unreadable JSON ({' '.join(str(exc).split())[:200]})") from None
    done = state.get("done") if isinstance(state, dict) else None
    if not (isinstance(done, int) and not isinstance(done, bool) and -1 <= done < n_layers):
        raise _resume_error(work, PROGRESS_FILE, f"'done' must be a layer index in [-1, {n_layers}), got {done!r}")
    specs = state.get("specs")
    if not isinstance(specs, dict) or not all(isinstance(specs.get(str(i)), dict) for i in range(done + 1)):
        raise _resume_error(work, PROGRESS_FILE, f"'specs' must hold a module spec mapping for layers 0..{done}")
    if not isinstance(state.get("reports"), list):
        raise _resume_error(work, PROGRESS_FILE, "'reports' must be a list")
    return state


def _load_layer_state(work: Path, i: int, layer: nn.Module, adapter, layer_specs: dict, cfg, device) -> None:
    """Rebuild finished layer ``i`` from its spec and ``layer_XXX.safetensors`` after validating the
    file against the rebuilt layer (names, dtypes, shapes) and the loaded values (finite, in range)."""
    from safetensors.torch import load_file

    from llmquant.quant.checkpoint import _read_errors, validate_loaded_values, validate_state_file

    name = f"layer_{i:03d}.safetensors"
    if not (work / name).is_file():
        raise _resume_error(work, name, "missing")
    try:
        build_quantized_shell(layer, adapter, layer_specs, cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise _resume_error(work, PROGRESS_FILE, f"bad module spec of layer {i} ({exc})") from None
    validate_state_file(work / name, layer.state_dict())
    try:
        sd = load_file(str(work / name), device=str(device))
    except _read_errors() as exc:
        raise _resume_error(work, name, f"unreadable ({' '.join(str(exc).split())[:200]})") from None
    layer.load_state_dict(sd, strict=True)
    validate_loaded_values(layer, work / name)


def _load_acts(work: Path, captured: list[torch.Tensor], device) -> list[torch.Tensor]:
    """The propagated activations of ``acts.safetensors``: one ``acts.<j>`` per calibration batch with
    the dtype and shape of the freshly captured layer-0 inputs ``captured[j]``, all finite."""
    from safetensors.torch import load_file

    from llmquant.quant.checkpoint import _read_errors, validate_state_file

    path = work / ACTS_FILE
    if not path.is_file():
        if (work / LEGACY_ACTS_FILE).is_file():
            raise _resume_error(work, LEGACY_ACTS_FILE, "was written by an older llmquant as a pickle, which is "
                                                        "never loaded")
        raise _resume_error(work, ACTS_FILE, "missing")
    validate_state_file(path, {f"acts.{j}": t for j, t in enumerate(captured)})
    try:
        acts = load_file(str(path), device=str(device))
    except _read_errors() as exc:
        raise _resume_error(work, ACTS_FILE, f"unreadable ({' '.join(str(exc).split())[:200]})") from None
    out = [acts[f"acts.{j}"] for j in range(len(captured))]
    for j, t in enumerate(out):
        if not bool(torch.isfinite(t).all()):
            raise _resume_error(work, ACTS_FILE, f"acts.{j} has NaN/Inf values")
    return out


def _save_progress(work: Path, layer: nn.Module, i: int, inps, specs, reports, config_hash: str) -> None:
    from safetensors.torch import save_file

    from llmquant.quant.checkpoint import MARKER_FILE, write_marker

    work.mkdir(parents=True, exist_ok=True)
    if not (work / MARKER_FILE).is_file():
        write_marker(work, "work")
    sd = {k: v.detach().contiguous().clone() for k, v in layer.state_dict().items()}
    _atomic_write_bytes(work / f"layer_{i:03d}.safetensors", lambda p: save_file(sd, str(p)))
    acts = {f"acts.{j}": t.detach().contiguous() for j, t in enumerate(inps)}
    _atomic_write_bytes(work / ACTS_FILE, lambda p: save_file(acts, str(p)))
    state = {
        "config_hash": config_hash,
        "done": i,
        "specs": {str(j): s for j, s in specs.items()},
        "reports": reports,
    }
    _atomic_write_bytes(work / PROGRESS_FILE, lambda p: p.write_text(json.dumps(state, indent=1)))
