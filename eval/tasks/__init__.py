"""Offline definitions of lm-eval's stock tasks (piqa, arc_easy, arc_challenge, lambada_openai,
hellaswag, winogrande) reading ``LLMQUANT_DATA_DIR/tasks/...`` jsonl."""

from llmquant.eval.tasks.base import LocalTask, TaskDataMissing, aggregate
from llmquant.eval.tasks.definitions import TASKS, get_task

__all__ = ["TASKS", "LocalTask", "TaskDataMissing", "aggregate", "get_task"]
