"""The model card (``README.md``) of a checkpoint folder, in the layout the Hugging Face hub shows.

``model_card(meta, results, name) -> str``: YAML front matter (``library_name: transformers``, ``tags``,
``base_model`` when the source model is known on the hub, ``pipeline_tag``) followed by Markdown:

* **Method**: the method name, what is quantized (weights / activations / KV cache, with lattice, modulus
  ``q``, ``k`` betas or the box code / scalar bits), the rotation, the calibration protocol;
* **Stored bits** per entry from ``results["bits"]`` (weights: the stored figure, bytes of the packed tensors
  over the weight count; activations / KV: the bits of the code the config selects; embeddings / ``lm_head``:
  their storage dtype ``model.embed_dtype``, or "model dtype" when it is null, and ``bits.embeddings``, present
  only when ``model.embed_dtype`` is set);
* **Results**: one table row per perplexity dataset (quantized, FP, difference; tokens and context from
  ``ppl_details``) and per downstream task metric (``results["tasks"]``); absent sections say so;
* **Usage**: how to load it (``import llmquant`` then ``AutoModelForCausalLM.from_pretrained``) and the
  llmquant commands;
* **Config**: the resolved llmquant config as YAML.

Only numbers present in ``results.json`` are printed; nothing is estimated.  Written by
:func:`llmquant.quant.checkpoint.save_checkpoint` and rewritten by
:func:`llmquant.quant.checkpoint.update_results` whenever the results change.
"""

from __future__ import annotations

import json

#: embedded model specs -> the hub repository they were converted from (GGUF)
EMBEDDED_BASE = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}


def _base_model(spec: str | None) -> str | None:
    """A hub id for ``base_model``: the embedded models' sources, or a spec shaped ``owner/name``."""
    if not spec:
        return None
    s = str(spec)
    if s.lower() in EMBEDDED_BASE:
        return EMBEDDED_BASE[s.lower()]
    parts = s.split("/")
    if len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~")) and not s.endswith(".gguf"):
        return s
    return None


def _yaml_scalar(v) -> str:
    return json.dumps(v) if isinstance(v, str) else ("null" if v is None else str(v).lower()
                                                      if isinstance(v, bool) else str(v))


def _to_yaml(d, indent: int = 0) -> list[str]:
    """Plain block YAML of a JSON-like dict (strings JSON-quoted, so every value parses back)."""
    out = []
    pad = "  " * indent
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.append(f"{pad}{k}:")
            out.extend(_to_yaml(v, indent + 1))
        elif isinstance(v, list) and v and not any(isinstance(x, (dict, list)) for x in v):
            out.append(f"{pad}{k}: [{', '.join(_yaml_scalar(x) for x in v)}]")
        elif isinstance(v, (dict, list)):
            out.append(f"{pad}{k}: {json.dumps(v)}")
        else:
            out.append(f"{pad}{k}: {_yaml_scalar(v)}")
    return out


def _part(section: dict | None) -> str:
    """One line for a weights / activations / kv config section."""
    if not section or section.get("method", "none") == "none":
        return "not quantized (floating point)"
    m = section["method"]
    if m == "lattice":
        if section.get("code", "voronoi") == "box":
            return f"box lattice code, {section.get('box_bits')} bits + 8-bit word tail per 8-vector " \
                   f"(variant {section.get('box_variant')})"
        algo = f", {section['algorithm'].upper()}" if "algorithm" in section else ""
        return f"{section.get('lattice', 'E8')} nested lattice (Voronoi), q = {section.get('q')}, " \
               f"{section.get('k')} betas{algo}"
    if m == "scalar":
        g = section.get("group_size", 0)
        algo = f", {section['algorithm'].upper()}" if "algorithm" in section else ""
        return f"INT{section.get('bits')} scalar, " + (f"groups of {g}" if g else "per channel") + algo
    return str(m)


def _embed_storage(cfg: dict) -> tuple[str, str]:
    """``(short, long)`` names of the storage dtype of the input embeddings and ``lm_head``: ``model.embed_dtype``
    (e.g. ``("bfloat16", "bfloat16 (computed in float32)")``), or, when it is null or absent (checkpoints written
    before the key existed), ``("model dtype", "the model dtype (float32)")``."""
    model = cfg.get("model") or {}
    dtype, embed = model.get("dtype", "?"), model.get("embed_dtype")
    if embed is None:
        return "model dtype", f"the model dtype ({dtype})"
    return embed, (f"{embed} (the model dtype)" if embed == dtype else f"{embed} (computed in {dtype})")


def _fmt(x) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _results_rows(results: dict) -> list[str]:
    rows = []
    fp, delta, details = results.get("fp_ppl") or {}, results.get("delta_ppl") or {}, results.get("ppl_details") or {}
    for ds, ppl in (results.get("ppl") or {}).items():
        d = details.get(ds) or {}
        note = ", ".join(f"{k} {d[k]}" for k in ("tokens", "context") if k in d)
        rows.append(f"| {ds} | perplexity | {_fmt(ppl)} | {_fmt(fp[ds]) if ds in fp else '-'} | "
                    f"{_fmt(delta[ds]) if ds in delta else '-'} | {note} |")
    for task, metrics in (results.get("tasks") or {}).items():
        if not isinstance(metrics, dict):
            continue
        for metric, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append(f"| {task} | {metric} | {_fmt(value)} | - | - | |")
    return rows


def model_card(meta: dict, results: dict, name: str = "checkpoint") -> str:
    """``README.md`` text for a checkpoint with ``llmquant_config.json`` content ``meta`` and ``results``."""
    cfg = meta.get("config") or {}
    spec = (cfg.get("model") or {}).get("spec")
    base = _base_model(spec)
    method = cfg.get("method") or "llmquant"
    tags = ["llmquant", "quantized", "lattice-quantization" if "lattice" in json.dumps(cfg) else "scalar-quantization",
            str(method)]
    front = {"library_name": "transformers", "tags": list(dict.fromkeys(tags))}
    if base:
        front["base_model"] = base
    front["pipeline_tag"] = "text-generation"
    lines = ["---", *_to_yaml(front), "---", "", f"# {name}", ""]
    src = f"[{base}](https://huggingface.co/{base})" if base else f"`{spec}`"
    lines += [(f"{src} quantized with llmquant (method `{method}`, config `{cfg.get('name', '?')}`, llmquant "
               f"{meta.get('llmquant_version', '?')}, checkpoint format {meta.get('format_version', '?')})."), ""]
    rot = cfg.get("rotation") or {}
    cal = cfg.get("calibration") or {}
    plan = meta.get("rotation_plan")
    lines += ["## Method", "",
              f"- Weights: {_part(cfg.get('weights'))}",
              f"- Activations: {_part(cfg.get('activations'))}",
              f"- KV cache: {_part(cfg.get('kv'))}",
              f"- Embeddings / lm_head: not quantized, stored in {_embed_storage(cfg)[1]}",
              "- Rotation: " + (f"random Hadamard (QuaRot-style), seed {rot.get('seed')}, norm gains "
                                f"{rot.get('norm_gains', 'fold')}, online down_proj {rot.get('online_down')}, "
                                f"V/O {rot.get('v_o')}, Q/K {rot.get('qk')}" if plan else "none"),
              (f"- Calibration: {cal.get('n_samples')} x {cal.get('seq_len')} tokens of {cal.get('dataset')} "
               f"(seed {cal.get('seed')})"), ""]
    bits = results.get("bits") or {}
    lines += ["## Stored bits per entry", "", "| tensor | bits |", "|---|---|"]
    for key in ("weights", "activations", "kv"):
        lines.append(f"| {key} | {_fmt(bits[key]) if key in bits else '-'} |")
    lines.append(f"| embeddings / lm_head ({_embed_storage(cfg)[0]}) | "
                 f"{_fmt(bits['embeddings']) if 'embeddings' in bits else '-'} |")
    lines += ["", ("Weights: bytes of every tensor of the quantized linears (codes, beta indices, scales, biases) "
                   "over the number of weights, as stored in the safetensors file.  Activations / KV: bits per "
                   "entry of the runtime code, computed from the config (llmquant.config.bits).  Embeddings / "
                   "lm_head: floating point, in the storage dtype `model.embed_dtype` (null: the model dtype); "
                   "their stored bits per entry are reported only when `model.embed_dtype` is set."), ""]
    rows = _results_rows(results)
    lines += ["## Results", ""]
    if rows:
        lines += ["| benchmark | metric | this model | FP | difference | protocol |", "|---|---|---|---|---|---|",
                  *rows, ""]
    else:
        lines += ["No evaluation yet (`llmquant eval DIR --ppl wikitext2` adds it here).", ""]
    lines += ["## Usage", "", "```python", "import llmquant  # registers the 'llmquant' quantizer with transformers",
              "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'model = AutoModelForCausalLM.from_pretrained("{name}")',
              f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
              "```", "", (f"or `llmquant generate {name} --prompt ...`, `llmquant eval {name} --ppl wikitext2`, "
                          f"`llmquant serve {name}`."), ""]
    lines += ["## Config", "", "```yaml", *_to_yaml(cfg), "```", ""]
    return "\n".join(lines)
