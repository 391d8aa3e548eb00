"""Offline task definitions mirroring lm-eval's stock zero-shot tasks.

A :class:`LocalTask` reads HF-layout jsonl rows from ``DATA_DIR/tasks/<file>`` and turns each
document into log-likelihood requests exactly as lm-eval does (``target_delimiter = " "``):

* ``multiple_choice``: requests ``(text(doc), " " + choice)`` for each choice; ``gold = target(doc)``
  (an index).  ``acc = [argmax_i ll_i == gold]``, ``acc_norm = [argmax_i ll_i / len(choice_i) == gold]``
  with ``len`` in characters of the choice string (no delimiter).
* ``multiple_input`` (WinoGrande "partial evaluation"): the choices are the *contexts* and the
  shared target is the continuation: requests ``(choice_i, " " + target(doc))``, gold index is
  ``text(doc)``; ``acc`` as above.
* ``loglikelihood`` (LAMBADA): one request ``(text(doc), target(doc))``; ``acc = is_greedy``,
  ``perplexity = exp(-mean(ll))`` over documents.

Each metric is averaged over documents; ``<metric>_stderr`` is the sample standard deviation
(n - 1) over sqrt(n), as lm-eval reports it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class TaskDataMissing(FileNotFoundError):
    """A local task's jsonl file is not in the data folder."""


@dataclass(frozen=True)
class LocalTask:
    name: str
    #: path of the jsonl file relative to ``DATA_DIR/tasks``
    file: str
    #: where the rows come from upstream (named in the missing-data error)
    source: str
    output_type: str  # "multiple_choice" | "multiple_input" | "loglikelihood"
    text: Callable[[dict], object]
    target: Callable[[dict], object]
    choices: Callable[[dict], list[str]] | None = None
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    process: Callable[[dict], dict] | None = None

    def path(self, data_dir: Path | None) -> Path | None:
        return None if data_dir is None else data_dir / "tasks" / self.file

    def load_docs(self, data_dir: str | os.PathLike | None, limit: int | None = None) -> list[dict]:
        """The first ``limit`` documents (all when ``None``), in file order like lm-eval's ``--limit``."""
        folder = Path(data_dir) if data_dir is not None else None
        path = self.path(folder)
        if path is None or not path.is_file():
            where = f"{path} does not exist" if path is not None else "no data folder is set"
            raise TaskDataMissing(
                f"task {self.name!r}: data missing ({where}). Put the {self.source} rows as jsonl at "
                f"LLMQUANT_DATA_DIR/tasks/{self.file} (or pass --data-dir), or run online so lm-eval can "
                "download the stock task."
            )
        docs = []
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                doc = json.loads(line)
                docs.append(self.process(doc) if self.process else doc)
                if limit is not None and len(docs) >= limit:
                    break
        return docs

    def requests(self, doc: dict) -> list[tuple[str, str]]:
        if self.output_type == "multiple_choice":
            ctx = self.text(doc)
            return [(ctx, " " + c) for c in self.choices(doc)]
        if self.output_type == "multiple_input":
            cont = " " + self.target(doc)
            return [(c, cont) for c in self.choices(doc)]
        if self.output_type == "loglikelihood":
            return [(self.text(doc), self.target(doc))]
        raise ValueError(f"unknown output_type {self.output_type!r}")

    def score(self, doc: dict, results: list[tuple[float, bool]]) -> dict[str, float]:
        """Per-document metric values from the ``(loglik, is_greedy)`` of :meth:`requests`."""
        if self.output_type == "loglikelihood":
            ll, greedy = results[0]
            return {"acc": float(greedy), "perplexity": ll}
        lls = [r[0] for r in results]
        choices = self.choices(doc)
        gold = self.text(doc) if self.output_type == "multiple_input" else self.target(doc)
        gold = int(gold)
        pred = max(range(len(lls)), key=lambda i: lls[i])
        norm = [ll / float(len(c)) for ll, c in zip(lls, choices)]
        pred_norm = max(range(len(norm)), key=lambda i: norm[i])
        out = {"acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}
        return {k: out[k] for k in self.metrics}


def aggregate(per_doc: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric (``perplexity``: exp(-mean loglik)) plus ``<metric>_stderr`` and ``n``."""
    if not per_doc:
        raise ValueError("no documents were scored")
    n = len(per_doc)
    out: dict[str, float] = {}
    for key in per_doc[0]:
        values = [d[key] for d in per_doc]
        mean = sum(values) / n
        if key == "perplexity":
            out[key] = math.exp(-mean)
            continue
        out[key] = mean
        if n > 1:
            var = sum((v - mean) ** 2 for v in values) / (n - 1)
            out[f"{key}_stderr"] = math.sqrt(var / n)
    out["n"] = n
    return out
