"""The probe task types, in one registry: what each type's items hold, how it is evaluated and scored.

A type is one :class:`TaskType` entry of :data:`TYPES` (``multiple_choice``, ``perplexity``, ``generation``,
``knowledge``, ``chat_behaviour``); the task files, the engine, the cache key, the statistics, the stages and the
report read a type from here, and nowhere else says what a type is. Task files, by type (``fields`` maps these
canonical names to the file's):

    multiple_choice  question (text), choices (a list of at least 2 texts), answer (the 0-based index of the right one)
    knowledge_mc     the same fields: four-way questions about the documents trained on (``data/sources/knowledge``)
    perplexity       text
    generation       prompt, reference
    knowledge        question, answer
    chat_behaviour   prompt (an ordinary user prompt); the entry also names ``documents`` and ``min_verbatim_words``

How a type's items are evaluated (``evaluator``):

* ``choices``: lm-evaluation-harness scores every choice after the prompt (``{question}`` filled in); per item acc
  and acc_norm (all tasks of the type in one ``simple_evaluate`` call); knowledge_mc also p_right, the probability
  of the right choice normalized over the choices (softmax of their summed log-likelihoods): a continuous score
  that moves before the argmax flips, so a task of few items can show a gain that acc cannot.
* ``rolling``: the harness's ``loglikelihood_rolling``: per item the summed negative log-likelihood (nats) of the
  text's tokens, its token count and its UTF-8 byte count.
* ``generate``: greedy decoding through the variant's template; generation scores ROUGE-L F1, sentence BLEU and
  BERTScore F1 per item, knowledge exact, contains and ROUGE-L (``stages/probe/scorers.py``), chat_behaviour
  ended, no_turn_spill, not_verbatim and chat_ok, all four (``stages/probe/behaviour.py``).

How a task score is computed from the per-item scores (``Metric.aggregate``): ``mean`` of the item score of the
same name; ``corpus_bleu``: sacrebleu's corpus BLEU of the summed segment statistics; ``token_perplexity``
``exp(sum nll / sum tokens)``; ``bits_per_byte`` ``sum nll / sum bytes / ln 2``; ``byte_perplexity``
``2 ** bits_per_byte``. The main metric of a type decides forgetting and gain.

This module imports nothing of the project: every layer may read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# The rows of probe.showcase_prompts: a pseudo-type (greedy generations, no scores), not a task type.
SHOWCASE = "showcase"


@dataclass(frozen=True)
class Metric:
    """One task score of a type.

    Attributes:
        name: its key in the metrics JSON.
        higher_is_better: which way is better (perplexity and bits per byte: lower).
        aggregate: how the task score is computed from the items (see the module docstring).
    """

    name: str
    higher_is_better: bool
    aggregate: Literal["mean", "corpus_bleu", "token_perplexity", "bits_per_byte", "byte_perplexity"]


@dataclass(frozen=True)
class TaskType:
    """One probe task type.

    Attributes:
        name: the ``type`` of a ``probe.tasks`` entry, of a per-item row and of the task's metrics entry.
        fields: the canonical names of an item's fields, as ``probe.tasks[].fields`` maps them.
        example: a valid item under canonical names (shown, under the file's names, when a line is wrong).
        evaluator: how the model is run on the items (``choices``, ``rolling``, ``generate``; module docstring).
        item_scores: the keys of a row's per-item ``scores``.
        metrics: the task scores, in the order of the metrics JSON.
        main: the metric that decides forgetting and gain.
        reference: the item field written as the row's ``reference`` (``answer`` of multiple_choice: the text of
            the right choice; None: "").
        settings: further ``probe`` settings that change the per-item results (part of the cache key, besides the
            model, precision, device and batch size; ``choices``: the task's resolved prompt; ``generate``: the
            template keys that render prompts and ``max_new_tokens``).
        libraries: the packages that compute the per-item results (their versions are part of the cache key).
        paired_test: ``mcnemar``: the main score, 0/1 per item, is tested by the exact McNemar test; None (or a
            main score that is not 0/1): the paired sign-flip test (``stages/probe/significance.py``).
        harness_task: whether a task of this type may name an lm-evaluation-harness task instead of a file.
        prompt: whether a task of this type may set its own ``prompt`` (``{question}`` filled in).
        documents: whether a task of this type names ``documents`` and ``min_verbatim_words`` (chat_behaviour: the
            text its answers must not recite), part of its cache key.
    """

    name: str
    fields: tuple[str, ...]
    example: Mapping[str, Any]
    evaluator: Literal["choices", "rolling", "generate"]
    item_scores: tuple[str, ...]
    metrics: tuple[Metric, ...]
    main: str
    reference: str | None
    settings: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    paired_test: Literal["mcnemar"] | None = None
    harness_task: bool = False
    prompt: bool = False
    documents: bool = False

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def reference_of(self, item: Mapping[str, Any]) -> str:
        """The row's ``reference`` for an item (canonical names): the right choice, the reference, the answer."""
        if self.reference is None:
            return ""
        if self.evaluator == "choices":
            return item["choices"][item["answer"]]
        return item[self.reference]


_DEMO = {"question": "Which is a colour?", "choices": ["red", "seven"], "text": "Some held-out text."}
_DEMO |= {"prompt": "Name a colour.", "reference": "Red."}

TYPES: dict[str, TaskType] = {
    t.name: t
    for t in (
        TaskType(
            name="multiple_choice",
            fields=("question", "choices", "answer"),
            example={**_DEMO, "answer": 0},
            evaluator="choices",
            item_scores=("acc", "acc_norm"),
            metrics=(Metric("acc", True, "mean"), Metric("acc_norm", True, "mean")),
            main="acc",
            reference="answer",
            libraries=("lm_eval",),
            paired_test="mcnemar",
            harness_task=True,
            prompt=True,
        ),
        TaskType(
            name="knowledge_mc",
            fields=("question", "choices", "answer"),
            example={**_DEMO, "answer": 0},
            evaluator="choices",
            item_scores=("acc", "acc_norm", "p_right"),
            metrics=(Metric("p_right", True, "mean"), Metric("acc", True, "mean"), Metric("acc_norm", True, "mean")),
            # p_right, chosen before any run: per the measured flip rates ~23 items give 80% power on it
            # against ~55 on acc; it is tested by the paired sign-flip test (not 0/1)
            main="p_right",
            reference="answer",
            libraries=("lm_eval",),
            prompt=True,
        ),
        TaskType(
            name="perplexity",
            fields=("text",),
            example=_DEMO,
            evaluator="rolling",
            item_scores=("nll", "tokens", "bytes"),
            metrics=(
                Metric("token_perplexity", False, "token_perplexity"),
                Metric("bits_per_byte", False, "bits_per_byte"),
                Metric("byte_perplexity", False, "byte_perplexity"),
            ),
            main="bits_per_byte",
            reference=None,
            libraries=("lm_eval",),
        ),
        TaskType(
            name="generation",
            fields=("prompt", "reference"),
            example=_DEMO,
            evaluator="generate",
            item_scores=("rougeL", "bleu", "bertscore_f1"),
            metrics=(
                Metric("rougeL", True, "mean"),
                Metric("bleu", True, "corpus_bleu"),
                Metric("bertscore_f1", True, "mean"),
            ),
            main="rougeL",
            reference="reference",
            settings=("bertscore_model",),
            libraries=("bert_score", "sacrebleu", "rouge_score"),
        ),
        TaskType(
            name="knowledge",
            fields=("question", "answer"),
            example={**_DEMO, "answer": "Red"},
            evaluator="generate",
            item_scores=("exact", "contains", "rougeL"),
            metrics=(Metric("exact", True, "mean"), Metric("contains", True, "mean"), Metric("rougeL", True, "mean")),
            main="contains",
            reference="answer",
            libraries=("rouge_score",),
        ),
        TaskType(
            name="chat_behaviour",
            fields=("prompt",),
            example=_DEMO,
            evaluator="generate",
            item_scores=("ended", "no_turn_spill", "not_verbatim", "chat_ok"),
            metrics=(
                Metric("chat_ok", True, "mean"),
                Metric("ended", True, "mean"),
                Metric("no_turn_spill", True, "mean"),
                Metric("not_verbatim", True, "mean"),
            ),
            main="chat_ok",
            reference=None,
            documents=True,
        ),
    )
}

# Views of the registry for readers that want one fact of every type (the report's tables).
FIELDS: dict[str, tuple[str, ...]] = {name: t.fields for name, t in TYPES.items()}
MAIN_METRIC: dict[str, str] = {name: t.main for name, t in TYPES.items()}
TASK_METRICS: dict[str, tuple[str, ...]] = {name: t.metric_names for name, t in TYPES.items()}
HIGHER_IS_BETTER: dict[str, bool] = {m.name: m.higher_is_better for t in TYPES.values() for m in t.metrics}


def get(name: str) -> TaskType:
    """The registry entry of type `name`; a KeyError listing the types for an unknown one."""
    try:
        return TYPES[name]
    except KeyError:
        raise KeyError(f"unknown probe task type {name!r}; the types are {sorted(TYPES)}") from None


def check_task(task: Any) -> list[str]:
    """What is wrong with a ``probe.tasks`` entry for its type (empty: nothing), each problem a sentence.

    The type-dependent checks of an entry: its type exists; a file task's ``fields`` map exactly the type's
    canonical names; ``harness_task`` and ``prompt`` only for types that allow them.
    """
    where = f"probe.tasks[{task.name}]"
    if task.type not in TYPES:
        return [f"{where}.type: {task.type!r} is not a probe task type; use one of {sorted(TYPES)}"]
    t = TYPES[task.type]
    problems = []
    if task.harness_task is not None and not t.harness_task:
        allowed = sorted(n for n, x in TYPES.items() if x.harness_task)
        problems.append(f"{where}: harness_task is supported for type {allowed} only (got {t.name}); export the "
                        "items to a JSONL and use path and fields")  # fmt: skip
    if task.prompt is not None and not t.prompt:
        allowed = sorted(n for n, x in TYPES.items() if x.prompt)
        problems.append(f"{where}: prompt applies to types {allowed} only (got {t.name})")
    given = [k for k in ("documents", "min_verbatim_words") if getattr(task, k) is not None]
    if t.documents and len(given) < 2:
        problems.append(f"{where}: a {t.name} task names documents (files or folders of .md / .txt documents its "
                        "answers must not recite; [] for none) and min_verbatim_words (e.g. 12)")  # fmt: skip
    if given and not t.documents:
        allowed = sorted(n for n, x in TYPES.items() if x.documents)
        problems.append(f"{where}: {', '.join(given)} apply to types {allowed} only (got {t.name})")
    if task.harness_task is None and set(task.fields or {}) != set(t.fields):
        problems.append(
            f"{where}.fields ({t.name}): must map exactly {sorted(t.fields)} to the file's field names, e.g. "
            f"fields: {{{', '.join(f'{k}: {k}' for k in t.fields)}}}; got {sorted(task.fields or {})}"
        )
    return problems
