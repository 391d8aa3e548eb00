"""lm-eval model type ``"llmquant"``: any llmquant checkpoint (or model spec) under lm-eval's harness.

``register()`` adds the type to lm-eval's model registry; afterwards
``lm_eval.simple_evaluate(model="llmquant", model_args="path=DIR", ...)`` works.  The class
loads ``path`` with :func:`llmquant.api.load` and hands the model object to lm-eval's own HF
model class (``HFLM``), so tokenization, batching and scoring are lm-eval's, unchanged.

lm-eval 0.4 discovers models only through its built-in table and modules that were imported
before the run (it has no plugin entry-point group), so its CLI is reached through a wrapper
that registers first:

    python -m llmquant.eval.lm_eval_model --model llmquant --model_args path=DIR --tasks piqa --limit 100

takes exactly lm-eval's command-line arguments.  lm-eval is imported only inside functions:
importing this module loads nothing optional.

lm-eval's own ``hf`` model works on a checkpoint too: ``--model hf --model_args pretrained=DIR`` loads it with
``AutoModelForCausalLM.from_pretrained`` through the ``llmquant`` transformers quantizer (registered because
this module imports ``llmquant``; :mod:`llmquant.hf`), so both model types score the same model.

Offline (``LLMQUANT_DATA_DIR`` set): :func:`main` points lm-eval at :func:`local_task_dir`, a folder of task
yamls that are lm-eval's own stock yamls (piqa, arc_easy, arc_challenge, lambada_openai: prompts, targets,
metrics, tags unchanged) with the dataset replaced by the local jsonl of :data:`llmquant.eval.tasks.TASKS`
(``dataset_path: json``, one split = the split lm-eval scores).  lm-eval gives ``--include_path`` tasks
precedence over its built-ins, so ``--tasks piqa`` then reads the local file; a user ``--include_path`` folder
is kept (copied inside that folder).  Tasks whose stock yaml needs Python helpers (hellaswag, winogrande) or whose
local file is missing are left to lm-eval (which then needs the hub).
"""

from __future__ import annotations

import sys

MODEL_NAME = "llmquant"

_CLASS = None


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the 'llmquant' lm-eval model needs lm-eval: pip install 'llmquant[eval]' (lm-eval>=0.4,<0.5)"
        ) from exc


def model_class():
    """The ``HFLM`` subclass (built on first use so lm-eval stays an optional import)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    class LlmquantLM(HFLM):
        """``model_args``: ``path`` (checkpoint dir or model spec, required); the rest goes to ``HFLM``."""

        def __init__(self, path: str | None = None, pretrained=None, tokenizer=None, **kwargs):
            if pretrained is None:
                if not path:
                    raise ValueError("the llmquant lm-eval model needs model_args path=DIR (a checkpoint or spec)")
                from llmquant.api import load

                pretrained, tokenizer = load(path)
            # HFLM accepts a model object; device/dtype strings from the CLI do not apply to it.
            for key in ("device", "dtype", "parallelize"):
                kwargs.pop(key, None)
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    _CLASS = LlmquantLM
    return _CLASS


def register() -> type:
    """Register ``"llmquant"`` in lm-eval's model registry (idempotent); returns the class."""
    cls = model_class()
    from lm_eval.api.registry import model_registry

    if model_registry.get(MODEL_NAME, None) is not cls:
        model_registry.register(MODEL_NAME)(cls)
    return cls


#: local task -> (lm-eval stock yaml under lm_eval/tasks, the split lm-eval scores)
STOCK_YAMLS = {
    "piqa": ("piqa/piqa.yaml", "validation"),
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"),
    "lambada_openai": ("lambada/lambada_openai.yaml", "test"),
}


def local_task_dir(data_dir, out_dir) -> list[str]:
    """Write lm-eval task yamls reading ``data_dir/tasks/...`` into ``out_dir`` (see the module docstring);
    returns the task names written."""
    import os
    from pathlib import Path

    import lm_eval
    import yaml
    from llmquant.eval.tasks import TASKS

    written = []
    stock_root = Path(os.path.dirname(lm_eval.__file__)) / "tasks"
    for name, (rel, split) in STOCK_YAMLS.items():
        data = Path(data_dir) / "tasks" / TASKS[name].file
        if not data.is_file() or not (stock_root / rel).is_file():
            continue
        cfg = yaml.safe_load((stock_root / rel).read_text())
        for key in ("training_split", "validation_split", "test_split", "fewshot_split", "dataset_name"):
            cfg.pop(key, None)
        cfg.update(dataset_path="json", dataset_kwargs={"data_files": {split: str(data.resolve())}},
                   **{f"{split}_split": split})
        (Path(out_dir) / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        written.append(name)
    return written


def _with_local_tasks(argv: list[str], tmp: str) -> list[str]:
    """``argv`` with ``--include_path`` pointing at the local task folder ``tmp`` (a user's ``--include_path``
    folder copied inside it); unchanged without ``LLMQUANT_DATA_DIR``."""
    import os

    from llmquant.data import resolve_data_dir

    data_dir = resolve_data_dir()
    if data_dir is None:
        return list(argv)
    rest, user, i = [], None, 0
    while i < len(argv):
        if argv[i] == "--include_path" and i + 1 < len(argv):
            user, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--include_path="):
            user = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    if user is not None:  # copied whole (yamls may name ``!function`` helpers next to them)
        import shutil

        shutil.copytree(os.path.abspath(user), os.path.join(tmp, "user_tasks"))
    local_task_dir(data_dir, tmp)
    return [*rest, "--include_path", tmp]


def main(argv: list[str] | None = None) -> int:
    """lm-eval's CLI with the ``llmquant`` model type registered (and the ``llmquant`` transformers quantizer, so
    ``--model hf --model_args pretrained=CHECKPOINT`` works), reading local task data when ``LLMQUANT_DATA_DIR``
    is set (:func:`local_task_dir`)."""
    import tempfile

    import llmquant.hf

    llmquant.hf.register()
    register()
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="llmquant-lm-eval-tasks-") as tmp:
        sys.argv = [sys.argv[0], *_with_local_tasks(args, tmp)]
        cli_evaluate()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
