"""Build a checkpoint's model without dense weights, then read its tensors straight into it.

Peak memory of loading a quantized checkpoint = the tensors the checkpoint holds (packed codes, scales, norms,
embeddings, ...) plus one tensor in flight, instead of a dense floating-point model plus a copy of the file:

1. :func:`empty_model`: ``AutoModelForCausalLM.from_config`` under ``accelerate.init_empty_weights`` with
   ``include_buffers=False``: every parameter lives on the meta device (shape and dtype, no memory); buffers are
   real, so the ones no checkpoint stores (rotary ``inv_freq``, Gemma's ``embed_scale``: non-persistent) get
   the values a normal build computes.  Tied parameters (``tie_word_embeddings``) are one meta ``Parameter``
   reachable under both names.
2. the caller installs the quantized structure (rotation modules, packed shells); the rotation step moves
   the model to the device of its first parameter (meta), so :func:`restore_buffers` puts the real buffers
   recorded by :func:`real_buffers` back where they are still meta and the file does not hold them.
3. :func:`read_state_file`: every tensor of the safetensors file is read with plain ``readinto`` into its
   destination: in place when the model already holds a real CPU tensor of that dtype and shape (e.g. packed
   shells built zero-filled), else into a fresh tensor that replaces the meta one (the parameters, and the
   packed shells :func:`llmquant.quant.checkpoint.load_quantized` builds on the meta device) under every name
   that shares it (so tied embeddings stay one ``Parameter``).  No ``mmap`` (mapped file pages would count in the
   resident set while the file is open) and no intermediate state dict.  The bytes are copied unchanged,
   so the loaded values are bit-identical to ``safetensors.torch.load_model``'s.

safetensors layout (little-endian): ``u64 n``, ``n`` bytes of JSON header ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data; offsets are relative to byte
``8 + n``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from torch import nn

#: safetensors header dtype names -> torch dtypes
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}


class StateFileError(ValueError):
    """The safetensors file is truncated, has a malformed header, or names a tensor the model lacks."""


def empty_model(hf_config, dtype: torch.dtype):
    """``AutoModelForCausalLM.from_config(hf_config, dtype=dtype)`` with every parameter on the meta device
    (buffers real, see the module docstring); in eval mode."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model.tie_weights()  # under init_empty_weights transformers 5 leaves tied parameters untied; tie as from_config
    return model.eval()


def real_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: buffer}`` of the buffers of ``model`` that are not on the meta device (every name of a
    shared one)."""
    return {n: b for n, b in model.named_buffers(remove_duplicate=False) if b is not None and not b.is_meta}


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """``{id(tensor): [(module, leaf, full name), ...]}`` over all parameters and buffers, every name of a
    shared tensor (tied parameters, buffers of modules reachable under several names)."""
    out: dict[int, list] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for store in (module._parameters, module._buffers):
            for leaf, t in store.items():
                if t is not None:
                    out.setdefault(id(t), []).append((module, leaf, f"{mname}.{leaf}" if mname else leaf))
    return out


def _replace(owners, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Put ``new`` wherever ``old`` is held (as a ``Parameter`` with ``old``'s ``requires_grad`` when ``old`` is
    one); ``owners`` (from :func:`_owners`) is updated.  Returns the tensor now held."""
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(new, requires_grad=old.requires_grad)
    held = owners.pop(id(old))
    for module, leaf, _ in held:
        if module._parameters.get(leaf) is old:
            module._parameters[leaf] = new
        else:
            module._buffers[leaf] = new
    owners[id(new)] = held
    return new


def restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor], skip=()) -> list[str]:
    """Put back ``saved`` buffers (from :func:`real_buffers`) whose name now holds a meta tensor, unless the name
    is in ``skip`` (tensors the checkpoint file will supply).  Returns the names restored."""
    owners = _owners(model)
    done = []
    for name, module_buf in list(model.named_buffers(remove_duplicate=False)):
        if (module_buf is None or not module_buf.is_meta or name not in saved or name in skip
                or id(module_buf) not in owners):  # (another name of a buffer already restored)
            continue
        value = saved[name]
        if tuple(value.shape) != tuple(module_buf.shape) or value.dtype != module_buf.dtype:
            continue
        _replace(owners, module_buf, value)
        done.append(name)
    return done


def read_header(file: str | os.PathLike) -> tuple[dict, int]:
    """``({name: {"dtype", "shape", "data_offsets"}}, data start byte)`` of a safetensors file (no data read);
    :class:`StateFileError` when the header is malformed or the data shorter than it says."""
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise StateFileError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise StateFileError(f"header length {n} exceeds the file size {size}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as exc:
            raise StateFileError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise StateFileError("header is not a JSON object")
    header.pop("__metadata__", None)
    start = 8 + n
    for name, info in header.items():
        try:
            dtype = ST_DTYPES[info["dtype"]]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise StateFileError(f"tensor {name}: malformed header entry") from None
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * torch.empty((), dtype=dtype).element_size() or begin < 0 or start + end > size:
            raise StateFileError(f"tensor {name}: data_offsets {[begin, end]} do not fit its shape or the file "
                                 f"({size} bytes)")
    return header, start


def _read_into(f, start: int, begin: int, end: int, dest: torch.Tensor) -> None:
    if end == begin:
        return
    view = dest.reshape(-1).view(torch.uint8).numpy()
    f.seek(start + begin)
    got = f.readinto(memoryview(view))
    if got != end - begin:
        raise StateFileError(f"read {got} of {end - begin} bytes (truncated)")


@torch.no_grad()
def read_state_file(model: nn.Module, file: str | os.PathLike, device: torch.device | str | None = None) -> list[str]:
    """Read every tensor of the safetensors ``file`` into ``model`` by name (see the module docstring).

    A destination that is a real tensor is overwritten in place (on CPU: read directly into it; elsewhere
    through a CPU copy); a meta one is replaced, under all its names, by a new tensor on ``device`` (None:
    CPU).  The file's dtype and shape must equal the destination's.  Returns the names of the parameters and
    buffers that are still on the meta device afterwards (sorted; empty when the file supplied everything);
    :class:`StateFileError` for an unknown tensor, a dtype/shape mismatch or a truncated file."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    header, start = read_header(file)
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.named_buffers(remove_duplicate=False))
    owners = _owners(model)
    with open(file, "rb") as f:
        for name, info in sorted(header.items(), key=lambda kv: int(kv[1]["data_offsets"][0])):
            dest = named.get(name)
            if dest is None:
                raise StateFileError(f"tensor {name} is not in the model")
            dtype, shape = ST_DTYPES[info["dtype"]], tuple(int(d) for d in info["shape"])
            if dest.dtype != dtype or tuple(dest.shape) != shape:
                raise StateFileError(f"tensor {name} is {info['dtype']} {list(shape)}, the model has "
                                     f"{dest.dtype} {list(dest.shape)}")
            begin, end = (int(o) for o in info["data_offsets"])
            if not dest.is_meta:
                if dest.device.type == "cpu" and dest.is_contiguous():
                    _read_into(f, start, begin, end, dest.data)
                else:
                    tmp = torch.empty(shape, dtype=dtype)
                    _read_into(f, start, begin, end, tmp)
                    dest.data.copy_(tmp)
                continue
            new = torch.empty(shape, dtype=dtype)
            _read_into(f, start, begin, end, new)
            if device.type != "cpu":
                new = new.to(device)
            aliases = owners[id(dest)]
            held = _replace(owners, dest, new)
            for _, _, alias in aliases:
                named[alias] = held
    return sorted(n for n, t in named.items() if t is not None and t.is_meta)


def release_free_heap() -> bool:
    """Hand the C allocator's free pages back to the operating system (glibc ``malloc_trim(0)``).

    Building the packed shells (and validating the loaded tensors) allocates many short-lived tensors of
    kilobytes to megabytes; glibc keeps the freed space in its heap, where it still counts in the resident set
    (about 0.1 GB for SmolLM2-135M) although nothing holds it.  Trimming after those steps keeps the resident
    set near the tensors the model holds.  Returns False where there is no glibc (nothing is done)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0)) or True
