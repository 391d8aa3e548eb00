"""The six standard zero-shot tasks, with lm-eval 0.4's prompts, targets, splits and metrics.

| task | rows (HF layout) | prompt | choices / target | metrics |
| --- | --- | --- | --- | --- |
| piqa | piqa validation ``{goal, sol1, sol2, label}`` | ``"Question: {goal}\\nAnswer:"`` | ``[sol1, sol2]``, ``label`` | acc, acc_norm |
| arc_easy / arc_challenge | ai2_arc test ``{question, choices{text,label}, answerKey}`` | ``"Question: {question}\\nAnswer:"`` | ``choices.text``, index of ``answerKey`` in ``choices.label`` | acc, acc_norm |
| lambada_openai | lambada_openai test ``{text}`` | all words but the last (split on ``" "``) | ``" " + last word`` | acc (greedy), perplexity |
| hellaswag | hellaswag validation ``{activity_label, ctx_a, ctx_b, endings, label}`` | cleaned ``"{activity_label}: {ctx_a} {Ctx_b}"`` | cleaned endings, ``int(label)`` | acc, acc_norm |
| winogrande | winogrande_xl validation ``{sentence, option1, option2, answer}`` | contexts: sentence up to ``_`` with each option | continuation: the text after ``_`` | acc |
"""

from __future__ import annotations

import re

from llmquant.eval.tasks.base import LocalTask


def _qa_prompt(field: str):
    return lambda doc: f"Question: {doc[field]}\nAnswer:"


def _arc_gold(doc: dict) -> int:
    labels = doc["choices"]["label"]
    if doc["answerKey"] not in labels:
        raise ValueError(f"ARC row {doc.get('id')}: answerKey {doc['answerKey']!r} not among labels {labels}")
    return labels.index(doc["answerKey"])


def _lambada_context(doc: dict) -> str:
    return " ".join(doc["text"].split(" ")[:-1])


def _lambada_target(doc: dict) -> str:
    return " " + doc["text"].split(" ")[-1]


def _hellaswag_clean(text: str) -> str:
    # WikiHow rows carry "[title]"-style markup; the stock task turns " [title]" into a sentence
    # break and deletes the other bracketed tags, then collapses the doubled spaces this leaves.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_process(doc: dict) -> dict:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        **doc,
        "query": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
        "clean_endings": [_hellaswag_clean(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


def _wino_gold(doc: dict) -> int:
    return {"1": 0, "2": 1}[str(doc["answer"])]


def _wino_contexts(doc: dict) -> list[str]:
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + opt for opt in (doc["option1"], doc["option2"])]


def _wino_target(doc: dict) -> str:
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


_ARC = {
    "output_type": "multiple_choice",
    "text": _qa_prompt("question"),
    "target": _arc_gold,
    "choices": lambda doc: list(doc["choices"]["text"]),
}

TASKS: dict[str, LocalTask] = {
    "piqa": LocalTask(
        name="piqa",
        file="piqa/piqa_validation.jsonl",
        source="PIQA validation (HF baber/piqa)",
        output_type="multiple_choice",
        text=_qa_prompt("goal"),
        target=lambda doc: int(doc["label"]),
        choices=lambda doc: [doc["sol1"], doc["sol2"]],
    ),
    "arc_easy": LocalTask(
        name="arc_easy", file="arc/ARC-Easy-test.jsonl", source="ARC-Easy test (HF allenai/ai2_arc)", **_ARC
    ),
    "arc_challenge": LocalTask(
        name="arc_challenge",
        file="arc/ARC-Challenge-test.jsonl",
        source="ARC-Challenge test (HF allenai/ai2_arc)",
        **_ARC,
    ),
    "lambada_openai": LocalTask(
        name="lambada_openai",
        file="lambada_openai/lambada_test.jsonl",
        source="LAMBADA OpenAI test (HF EleutherAI/lambada_openai)",
        output_type="loglikelihood",
        text=_lambada_context,
        target=_lambada_target,
        metrics=("acc", "perplexity"),
    ),
    "hellaswag": LocalTask(
        name="hellaswag",
        file="hellaswag/hellaswag_validation.jsonl",
        source="HellaSwag validation (HF Rowan/hellaswag)",
        output_type="multiple_choice",
        text=lambda doc: doc["query"],
        target=lambda doc: doc["gold"],
        choices=lambda doc: doc["clean_endings"],
        process=_hellaswag_process,
    ),
    "winogrande": LocalTask(
        name="winogrande",
        file="winogrande/winogrande_xl_validation.jsonl",
        source="WinoGrande xl validation (HF allenai/winogrande, winogrande_xl)",
        output_type="multiple_input",
        text=_wino_gold,
        target=_wino_target,
        choices=_wino_contexts,
        metrics=("acc",),
    ),
}


def get_task(name: str) -> LocalTask:
    """The local definition of ``name``; unknown names list the supported ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; local tasks are: {', '.join(TASKS)}") from None
