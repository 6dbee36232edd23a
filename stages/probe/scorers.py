"""Per-item scores of generated text: ROUGE-L, BLEU, BERTScore (generation) and exact / contains (knowledge).

generation: ROUGE-L F1 (rouge_score, stemmed), sentence BLEU (sacrebleu, 0-100) and BERTScore F1 (bert_score over
the local MiniLM, all 6 layers, no baseline rescaling); knowledge: exact (normalized prediction == normalized
answer), contains (the normalized answer occurs in the normalized prediction, on word boundaries), ROUGE-L F1.
Normalized: lower case, punctuation and articles (a, an, the) removed, whitespace collapsed (SQuAD).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import string
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.io import StageError
from stages.probe.harness import quiet_harness
from stages.probe.tables import round_score


@contextlib.contextmanager
def _no_hub() -> Iterator[None]:
    """BERTScore loads a local directory: make sure nothing tries the Hub."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # "Using default tokenizer." on every scorer
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge_score, Porter-stemmed tokens)."""
    return _rouge().score(reference, prediction)["rougeL"].fmeasure


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (0-100, exponential smoothing, effective order)."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference]).score


def bleu_stats(prediction: str, reference: str) -> list[float]:
    """sacrebleu's sufficient statistics of one segment: sys_len, ref_len, 4 matched and 4 total n-gram counts."""
    import sacrebleu

    s = sacrebleu.sentence_bleu(prediction, [reference])
    return [float(s.sys_len), float(s.ref_len), *map(float, s.counts), *map(float, s.totals)]


def corpus_bleu_from_stats(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU (sacrebleu's corpus_bleu, 0-100) of summed segment statistics, shape (..., 10) -> (...)."""
    from sacrebleu.metrics import BLEU

    flat = np.asarray(stats, dtype=np.float64).reshape(-1, 10)
    out = [
        BLEU.compute_bleu(
            [int(x) for x in s[2:6]], [int(x) for x in s[6:10]], int(s[0]), int(s[1]), smooth_method="exp"
        ).score
        for s in flat
    ]
    return np.array(out).reshape(np.asarray(stats).shape[:-1])


def bertscore(predictions: list[str], references: list[str], model: str) -> list[float]:
    """BERTScore F1 per pair with a local encoder (``probe.bertscore_model``), all its layers, no rescaling."""
    import bert_score

    from stages.curate.embed import resolve_model_dir

    model_dir = resolve_model_dir(model)
    if not Path(model_dir).is_dir():
        raise StageError(f"probe.bertscore_model {model!r}: not a local model directory; use package:<name> or a path")
    layers = json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"]
    # An empty text has no tokens to match: its F1 is 0 (bert_score itself fails on it with transformers 5).
    # One sentence a batch: bert_score orders sentences through a set (an order that changes with the process's
    # hash seed), and padding in a mixed batch moves the last digits; alone, each embedding is the same every run.
    scored = [i for i, (p, r) in enumerate(zip(predictions, references, strict=True)) if p.strip() and r.strip()]
    out = [0.0] * len(predictions)
    if not scored:
        return out
    with _no_hub(), quiet_harness():
        _, _, f1 = bert_score.score(
            [predictions[i] for i in scored], [references[i] for i in scored], model_type=model_dir,
            num_layers=layers, batch_size=1, rescale_with_baseline=False, idf=False, verbose=False,
            device="cpu",
        )  # fmt: skip
    for i, x in zip(scored, f1, strict=True):
        out[i] = float(x)
    return out


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, punctuation (any Unicode P*) and articles removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(
        " " if c in "\n\t" else c for c in text if c not in _PUNCT and not unicodedata.category(c).startswith("P")
    )
    return " ".join(_ARTICLES.sub(" ", text).split())


def knowledge_scores(prediction: str, answer: str) -> dict[str, float]:
    """exact, contains (the normalized answer within the normalized prediction, on word boundaries) and rougeL."""
    p, a = normalize_answer(prediction), normalize_answer(answer)
    return {
        "exact": float(p == a),
        "contains": float(bool(a) and f" {a} " in f" {p} "),
        "rougeL": rouge_l(prediction, answer),
    }


def generation_item_scores(predictions: list[str], references: list[str], bertscore_model: str) -> list[dict]:
    """Per item of a generation task: rougeL, bleu (sentence), bertscore_f1, rounded."""
    f1 = bertscore(predictions, references, bertscore_model)
    out = []
    for pred, ref, bs in zip(predictions, references, f1, strict=True):
        scores = {"rougeL": round_score(rouge_l(pred, ref)), "bleu": round_score(sentence_bleu(pred, ref))}
        scores["bertscore_f1"] = round_score(bs)
        out.append(scores)
    return out


def knowledge_item_scores(predictions: list[str], references: list[str], bertscore_model: str) -> list[dict]:
    """Per item of a knowledge task: exact, contains, rougeL, rounded (`bertscore_model` is not used)."""
    return [
        {k: round_score(v) for k, v in knowledge_scores(pred, ref).items()}
        for pred, ref in zip(predictions, references, strict=True)
    ]


# The per-item scorer of each type whose items are generated (the registry's evaluator "generate"), by type name:
# (predictions, references, probe.bertscore_model) -> per-item scores, the keys of the type's item_scores.
GENERATED = {"generation": generation_item_scores, "knowledge": knowledge_item_scores}
