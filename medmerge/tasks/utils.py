"""Functions the task YAMLs reference (``!function utils.x``): Hub records -> normalised
docs, prompt texts where a template cannot express them, and IFEval's scorer offline.

Normalised multiple-choice doc: ``question``, ``choices`` (list), ``answer`` (0-based
index), plus ``context`` for PubMedQA — the shape of the files in a local data directory.
"""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJ"


# -- Hub layouts -> normalised docs -------------------------------------------------------------
def mmlu_pro_health_hub(dataset):
    return dataset.filter(lambda d: d["category"] == "health").map(
        lambda d: {"question": d["question"], "choices": d["options"], "answer": d["answer_index"]}
    )


def medmcqa_hub(dataset):
    return dataset.map(
        lambda d: {"question": d["question"], "choices": [d["opa"], d["opb"], d["opc"], d["opd"]], "answer": d["cop"]}
    )


def medqa_hub(dataset):
    return dataset.map(
        lambda d: {"question": d["sent1"], "choices": [d[f"ending{i}"] for i in range(4)], "answer": d["label"]}
    )


def pubmedqa_hub(dataset):
    labels = ["yes", "no", "maybe"]
    return dataset.map(lambda d: {
        "question": d["QUESTION"], "context": "\n".join(d["CONTEXTS"]), "choices": labels,
        "answer": labels.index(d["final_decision"]),
    })


def _hellaswag_clean(text: str) -> str:
    # as lm-eval's hellaswag preprocess: drop WikiHow markers and bracketed artefacts
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_hub(dataset):
    def norm(d):
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        return {"question": _hellaswag_clean(d["activity_label"] + ": " + ctx),
                "choices": [_hellaswag_clean(e) for e in d["endings"]], "answer": int(d["label"])}

    return dataset.map(norm)


# -- prompts ---------------------------------------------------------------------------------------
def lettered_question(doc) -> str:
    options = "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(doc["choices"]))
    return f"{doc['question'].strip()}\n{options}Answer:"


def letters(doc) -> list[str]:
    return list(LETTERS[: len(doc["choices"])])


def medqa_text(doc) -> str:
    options = "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(doc["choices"]))
    return f"Question: {doc['question']}\n{options}Answer:"


def medmcqa_text(doc) -> str:
    options = "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(doc["choices"]))
    return f"Question: {doc['question'].strip()}\nChoices:\n{options}Answer:"


# -- IFEval, offline ---------------------------------------------------------------------------------
def ifeval_process_results(doc, results):
    from medmerge.evaluation.ifeval_offline import ifeval_utils

    return ifeval_utils().process_results(doc, results)


def ifeval_agg_inst_level_acc(items):
    from medmerge.evaluation.ifeval_offline import ifeval_utils

    return ifeval_utils().agg_inst_level_acc(items)


# -- lm-eval's stock MMLU-Pro on local files ----------------------------------------------------------
def mmlu_pro_stock_docs(dataset):
    """Normalised MMLU-Pro records -> the Hub layout lm-eval's ``mmlu_pro`` utils read: ``options`` (the
    list of choices), ``answer`` (the letter), ``answer_index``; ``cot_content`` and the rest pass through.
    Rows of another category, when the file names one, are dropped as the stock ``process_health`` does."""
    drop = [c for c in ("options", "answer") if c in dataset.column_names]
    if "category" in dataset.column_names:
        dataset = dataset.filter(lambda d: d["category"] == "health")
    return dataset.map(lambda d: {"options": d["choices"], "answer": LETTERS[d["answer"]],
                                  "answer_index": d["answer"]}, remove_columns=drop)
