"""Zero-shot downstream accuracy: lm-eval's stock tasks online, the local definitions offline.

``run_tasks(model, tokenizer, tasks, limit=None, batch_size=1)`` returns
``{task: {metric: value}}`` with ``acc`` / ``acc_norm`` (multiple choice), ``acc`` / ``perplexity``
(LAMBADA), their ``*_stderr``, ``n`` (documents scored) and ``seconds``; every value is a number.
:func:`choose_backend` tells which route a call will take.

Backend choice (``backend="auto"``): when the hub is reachable (``HF_DATASETS_OFFLINE`` /
``HF_HUB_OFFLINE`` unset) and lm-eval is installed, lm-eval's own harness runs the stock task
on our model object (wrapped by its HF model class); otherwise the local definitions in
:mod:`llmquant.eval.tasks` read ``DATA_DIR/tasks/...`` and score with
:class:`llmquant.eval.loglik.LoglikScorer`, which tokenizes and scores like lm-eval.
If the lm-eval route fails in ``auto`` mode (hub unreachable without the offline flags), the
local definitions are used with a warning.  ``backend="local"`` / ``"lm_eval"`` force one route.
"""

from __future__ import annotations

import os
import time
import warnings

from llmquant.eval.loglik import LoglikScorer
from llmquant.eval.tasks import aggregate, get_task

BACKENDS = ("auto", "local", "lm_eval")


def parse_task_list(tasks) -> list[str]:
    """``"piqa,arc_easy"`` or an iterable of names -> a list without blanks or duplicates."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for n in (t.strip() for t in names):
        if n and n not in out:
            out.append(n)
    if not out:
        raise ValueError("no tasks given; e.g. --tasks piqa,arc_easy,lambada_openai")
    return out


def _hub_offline() -> bool:
    return any(
        os.environ.get(k, "0").lower() in ("1", "true", "yes") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(backend: str = "auto") -> str:
    """``"lm_eval"`` or ``"local"``: the route :func:`run_tasks` takes for ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "lm_eval" if not _hub_offline() and _lm_eval_available() else "local"
    return backend


def run_local_task(scorer: LoglikScorer, name: str, limit: int | None, data_dir, progress: bool = False) -> dict:
    """Score one local task; raises :class:`~llmquant.eval.tasks.TaskDataMissing` if its file is absent."""
    from llmquant.data import resolve_data_dir

    task = get_task(name)
    docs = task.load_docs(resolve_data_dir(data_dir), limit)
    requests, owners = [], []
    for d, doc in enumerate(docs):
        for req in task.requests(doc):
            requests.append(req)
            owners.append(d)
    if progress:
        from tqdm.auto import tqdm

        # Score in slices so the bar moves; the scorer batches within each slice.
        step = max(scorer.batch_size * 8, 1)
        results = []
        for s in tqdm(range(0, len(requests), step), desc=name, unit="chunk"):
            results.extend(scorer.loglikelihood(requests[s : s + step]))
    else:
        results = scorer.loglikelihood(requests)
    grouped: list[list] = [[] for _ in docs]
    for owner, res in zip(owners, results):
        grouped[owner].append(res)
    return aggregate([task.score(doc, res) for doc, res in zip(docs, grouped)])


def run_lm_eval_tasks(model, tokenizer, names: list[str], limit: int | None, batch_size: int) -> dict:
    """Run lm-eval's stock tasks on the model object; metric keys lose lm-eval's ``,none`` filter suffix."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    raw = lm_eval.simple_evaluate(model=lm, tasks=names, limit=limit, num_fewshot=0)
    out = {}
    for name in names:
        metrics = raw["results"][name]
        clean = {}
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if filt in ("none", "") and isinstance(value, (int, float)) and not isinstance(value, bool):
                clean[metric] = float(value)
        n = raw.get("n-samples", {}).get(name, {}).get("effective")
        if n is not None:
            clean["n"] = int(n)
        out[name] = clean
    return out


def run_tasks(
    model,
    tokenizer,
    tasks,
    limit: int | None = None,
    batch_size: int = 1,
    data_dir=None,
    backend: str = "auto",
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy of ``model`` on ``tasks`` (names or a comma-separated string).

    ``limit`` keeps the first ``limit`` documents of each task (lm-eval's ``--limit``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (got {limit})")
    names = parse_task_list(tasks)
    use_lm_eval = choose_backend(backend) == "lm_eval"
    was_training = model.training
    model.eval()
    try:
        if use_lm_eval:
            t0 = time.perf_counter()
            try:
                results = run_lm_eval_tasks(model, tokenizer, names, limit, batch_size)
            except Exception as exc:
                if backend == "lm_eval":
                    raise
                warnings.warn(f"lm-eval could not run {names} ({type(exc).__name__}: {exc}); "
                              "falling back to the local task definitions", stacklevel=2)
            else:
                for r in results.values():
                    r["seconds"] = time.perf_counter() - t0
                return results
        for n in names:
            get_task(n)  # unknown names fail before any scoring
        scorer = LoglikScorer(model, tokenizer, batch_size=batch_size)
        results = {}
        for n in names:
            t0 = time.perf_counter()
            results[n] = run_local_task(scorer, n, limit, data_dir, progress=progress)
            results[n]["seconds"] = time.perf_counter() - t0
        return results
    finally:
        model.train(was_training)
