"""Cleanlab on real data: what Datalab's outlier, near-duplicate and label checks flag, and how often a person agrees.

Corpus (``--corpus``, default ``../shared/data/t0_train_50k.jsonl``): 55,185 prompt/completion records of the
public T0 training mixture, which nobody here wrote; its ``template`` field (283 promptsource templates over 37
datasets, 5-20 templates per dataset) is the record's label. A seeded sample (``--sample 3000``,
``random.Random(--seed 0)`` over the line numbers) becomes records the way pull makes them (``make_record``,
``<|endoftext|>`` stripped, ``meta.label`` = template), embedded with ``common.embedding`` of ``params.yaml``
through the shared cache (``.steep_cache/embeddings``; ~10 min for 3,000 texts on two CPU cores, then cached).

Each setting in :data:`SETTINGS` runs one Datalab check on those vectors, the way moderate does
(:func:`stages.curate.cleanlab_checks.datalab_issues`). For label checks it also reports how many flagged records
are predicted a *sibling* template (another prompt wording of the same dataset, :func:`dataset_of`) rather
than a template of another dataset, and how often the k-NN vote gets the template (and the dataset) right
on all records: the label check is only meaningful where the classes can be told apart.

Agreement: ``benchmarks/labels/t0_cleanlab.csv`` (``id,reason,verdict,note``) holds a person's verdicts on
flagged records (``right``: a real issue; ``wrong``: not one), written after reading each record;
``--review FILE`` writes the flagged records that have no verdict yet, with their text, to read.
Agreement = right / read, per setting, over the flagged records that have a verdict.

Run (from the project root)::

    .venv/bin/python benchmarks/cleanlab_calibration.py [--corpus PATH] [--sample 3000] [--review FILE]

Writes ``benchmarks/results/cleanlab_t0.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _t0  # noqa: E402
import yaml  # noqa: E402

from stages.core.params.common import Embedding  # noqa: E402
from stages.core.params.moderate import Cleanlab  # noqa: E402
from stages.core.records import make_record, record_text  # noqa: E402
from stages.curate.cleanlab_checks import datalab_issues as _datalab_issues  # noqa: E402
from stages.curate.embed import embed  # noqa: E402

DEFAULT_CORPUS = _t0.DEFAULT_CORPUS
CACHE = ROOT / ".steep_cache" / "embeddings"
LABELS = ROOT / "benchmarks" / "labels" / "t0_cleanlab.csv"
RESULTS = ROOT / "benchmarks" / "results" / "cleanlab_t0.json"

# The datasets of the T0 training mixture, as the prefixes of its template names (promptsource's
# dataset[_subset] followed by the prompt name). Longest first, so "glue_mrpc" wins over "glue".
T0_DATASETS = sorted(
    [
        "adversarial_qa_dbert",
        "adversarial_qa_dbidaf",
        "adversarial_qa_droberta",
        "ag_news",
        "amazon_polarity",
        "app_reviews",
        "cnn_dailymail_3_0_0",
        "common_gen",
        "commonsense_qa",
        "cosmos_qa",
        "dbpedia_14",
        "dream",
        "duorc_ParaphraseRC",
        "duorc_SelfRC",
        "gigaword",
        "glue_mrpc",
        "glue_qqp",
        "imdb",
        "kilt_tasks_hotpotqa",
        "multi_news",
        "paws_labeled_final",
        "qasc",
        "quarel",
        "quartz",
        "quoref",
        "ropes",
        "rotten_tomatoes",
        "samsum",
        "sciq",
        "social_i_qa",
        "trec",
        "wiki_bio",
        "wiki_hop_original",
        "wiki_qa",
        "wiqa",
        "xsum",
        "yelp_review_full",
    ],
    key=lambda d: (-len(d), d),
)

# (name, issue, Datalab issue kwargs, label kind). "current" is what moderate ran before this calibration:
# Datalab's defaults (outlier: k=10, threshold 0.37037, i.e. mean k-NN distance > Q3 + 1.7 IQR;
# near_duplicate: k=10, nearest neighbour within 0.13 x the median nearest-neighbour distance;
# label: k=10 nearest neighbours' vote, confident learning).
SETTINGS: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("outlier_default", "outlier", {}, None),
    ("outlier_k5", "outlier", {"k": 5}, None),
    ("outlier_k20", "outlier", {"k": 20}, None),
    ("outlier_t0.45", "outlier", {"threshold": 0.45}, None),
    ("outlier_t0.5", "outlier", {"threshold": 0.5}, None),
    ("outlier_t0.55", "outlier", {"threshold": 0.55}, None),
    ("outlier_t0.6", "outlier", {"threshold": 0.6}, None),
    ("near_duplicate_default", "near_duplicate", {}, None),
    ("near_duplicate_t0.05", "near_duplicate", {"threshold": 0.05}, None),
    ("near_duplicate_t0.25", "near_duplicate", {"threshold": 0.25}, None),
    ("near_duplicate_t0.4", "near_duplicate", {"threshold": 0.4}, None),
    ("label_template_default", "label", {}, "template"),
    ("label_template_k20", "label", {"k": 20}, "template"),
    ("label_dataset_default", "label", {}, "dataset"),
]
# Records nobody would want, written here to see whether an outlier setting catches real junk when there is
# some: keyboard mashing, mojibake, markup, a base64 blob, a number run, another language, one repeated
# character, web boilerplate, bare code, placeholder Latin. Added to the sample for the outlier settings only.
PLANTED = [
    ("asdf qwer zxcv", "jkl; jkl; jkl;"),
    ("Ã©Ã¨Ã Ã¢Ã®Ã´Ã»Ã§ Ã‰Ã€", "Ã¢â‚¬â„¢Ã¢â‚¬Å“"),
    (
        '<div class="nav"><ul><li><a href="/">Home</a></li><li><a href="/about">About</a></li></ul></div>',
        "<script>var x=1;</script>",
    ),
    ("aGVsbG8gd29ybGQgdGhpcyBpcyBhIGJhc2U2NCBibG9iIG9mIG5vdGhpbmcgaW4gcGFydGljdWxhcg==", "ZW5kIG9mIGJsb2I="),
    ("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", "21 22 23 24 25"),
    ("Wie spät ist es in Tokio, wenn es in Berlin Mittag ist?", "Es ist dann 20 Uhr in Tokio."),
    ("の の の の の の の の", "の"),
    ("Click here to unsubscribe. Terms and conditions apply. Copyright 2021 All rights reserved.", "Cookie settings"),
    ("def f(x):\n    return x ** 2\n\nprint(f(3))", "9"),
    ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod", "tempor incididunt ut labore"),
]
REASONS = {"outlier": "cleanlab_outlier", "near_duplicate": "cleanlab_near_duplicate", "label": "cleanlab_label_issue"}


def dataset_of(template: str) -> str:
    """The T0 dataset a template belongs to (its name's prefix); the template itself when none matches."""
    return next((d for d in T0_DATASETS if template == d or template.startswith(d + "_")), template)


def load_sample(corpus: Path, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` records drawn with ``random.Random(seed)`` from the corpus lines, in line order."""
    lines = _t0.lines(corpus)
    picked = sorted(random.Random(seed).sample(range(len(lines)), min(n, len(lines))))
    return [_t0.record(lines[i], {"label": json.loads(lines[i])["template"], "line": i + 1}) for i in picked]


def read_verdicts(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """{(id, reason): {verdict, note}} of the labels file (empty when it does not exist yet)."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", newline="") as f:
        return {(r["id"], r["reason"]): r for r in csv.DictReader(f) if r.get("verdict")}


def run_setting(
    records: list[dict[str, Any]],
    vectors: np.ndarray,
    issue: str,
    kwargs: dict[str, Any],
    label: str | None,
    seed: int,
    planted: np.ndarray,
    min_vote_accuracy: float = 0.0,
) -> tuple[list[int], dict[str, Any]]:
    """Flagged record indices of one Datalab check, and what else the setting reports.

    Outlier settings also run on the sample plus the `planted` junk vectors and report how many of those are
    flagged; a label setting whose k-NN vote accuracy is below `min_vote_accuracy` flags nothing (moderate's
    ``cleanlab.min_label_vote_accuracy``).
    """
    labels = None
    if label == "template":
        labels = [r["meta"]["label"] for r in records]
    elif label == "dataset":
        labels = [dataset_of(r["meta"]["label"]) for r in records]
    issues = _datalab_issues(vectors, {issue: kwargs}, labels, seed)[issue]
    flagged = [int(i) for i in np.flatnonzero(issues[f"is_{issue}_issue"].to_numpy())]
    extra: dict[str, Any] = {}
    if issue == "outlier":
        both = _datalab_issues(np.vstack([vectors, planted]), {issue: kwargs}, None, seed)[issue]
        hits = both["is_outlier_issue"].to_numpy()[len(vectors) :]
        extra["planted_junk_flagged"] = f"{int(hits.sum())}/{len(planted)}"
    if labels is not None:
        predicted = [str(p) for p in issues["predicted_label"]]
        hit = sum(p == g for p, g in zip(predicted, labels, strict=True))
        extra["knn_vote_accuracy"] = round(hit / len(labels), 3)
        if label == "template":
            same_ds = sum(dataset_of(p) == dataset_of(g) for p, g in zip(predicted, labels, strict=True))
            extra["knn_vote_dataset_accuracy"] = round(same_ds / len(labels), 3)
            sib = sum(dataset_of(predicted[i]) == dataset_of(labels[i]) for i in flagged)
            extra["flagged_predicted_sibling_template"] = sib
            extra["flagged_predicted_other_dataset"] = len(flagged) - sib
        extra["predicted"] = {records[i]["id"]: predicted[i] for i in flagged}
        if hit / len(labels) < min_vote_accuracy:
            extra["skipped"] = (
                f"k-NN vote accuracy {hit / len(labels):.3f} < min_label_vote_accuracy {min_vote_accuracy}"
            )
            flagged = []
    if issue == "near_duplicate":
        extra["flagged_exact_text_duplicates"] = _exact(records, flagged)
    return flagged, extra


def _exact(records: list[dict[str, Any]], flagged: list[int]) -> int:
    """How many flagged records have the same embedded text as another record of the sample."""
    texts = Counter(record_text(r) for r in records)
    return sum(texts[record_text(records[i])] > 1 for i in flagged)


def review_text(record: dict[str, Any], reason: str, note: str) -> str:
    """One flagged record, shortened, for a person to read."""

    def cut(s: str, n: int) -> str:
        return s if len(s) <= n else s[: n // 2] + " [...] " + s[-n // 2 :]

    return (
        f"=== {record['id']} {reason} [{record['meta']['label']}] {note}\n"
        f"--- prompt: {cut(record['instruction'], 900)}\n--- completion: {cut(record['output'], 400)}\n"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--sample", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--review", type=Path, help="write flagged records without a verdict here, to read")
    args = ap.parse_args(argv)
    if not args.corpus.exists():
        raise SystemExit(
            f"corpus {args.corpus} is absent: pass --corpus PATH to the T0 JSONL "
            "(fields template, prompt, completion; one record per line)"
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    embedding = Embedding.model_validate(params["common"]["embedding"])
    chosen = Cleanlab.model_validate(params["moderate"]["cleanlab"])
    seed = int(params["common"]["seed"])

    records = load_sample(args.corpus, args.sample, args.seed)
    vectors = embed([record_text(r, embedding.fields) for r in records], embedding, CACHE).astype(np.float64)
    planted_recs = [make_record(source="t0", kind="instruction", meta={}, instruction=a, output=b) for a, b in PLANTED]
    planted = embed([record_text(r, embedding.fields) for r in planted_recs], embedding, CACHE).astype(np.float64)
    verdicts = read_verdicts(LABELS)
    settings = list(SETTINGS)
    settings.append(("outlier_chosen", "outlier", {"k": chosen.outlier_k, "threshold": chosen.outlier_threshold}, None))
    settings.append(
        (
            "near_duplicate_chosen",
            "near_duplicate",
            {"k": chosen.near_duplicate_k, "threshold": chosen.near_duplicate_threshold},
            None,
        )
    )

    settings.append(("label_template_chosen", "label", {"k": chosen.label_k}, "template"))
    rows: list[dict[str, Any]] = []
    to_review: dict[tuple[str, str], str] = {}
    for name, issue, kwargs, label in settings:
        gate = chosen.min_label_vote_accuracy if name.endswith("_chosen") else 0.0
        flagged, extra = run_setting(records, vectors, issue, kwargs, label, seed, planted, gate)
        reason = REASONS[issue]
        marks = [
            verdicts[(records[i]["id"], reason)]["verdict"] for i in flagged if (records[i]["id"], reason) in verdicts
        ]
        predicted = extra.pop("predicted", {})
        for i in flagged:
            key = (records[i]["id"], reason)
            if key not in verdicts:
                note = f"predicted {predicted[key[0]]}" if key[0] in predicted else ""
                to_review.setdefault(key, review_text(records[i], reason, note))
        row = {
            "setting": name,
            "issue": issue,
            "datalab_kwargs": kwargs,
            "labels": label,
            "flagged": len(flagged),
            "read": len(marks),
            "agreed": marks.count("right"),
            "agreement": round(marks.count("right") / len(marks), 3) if marks else None,
            **extra,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    if args.review:
        args.review.write_text("".join(to_review[k] for k in sorted(to_review)), encoding="utf-8")
        print(f"{len(to_review)} flagged records without a verdict written to {args.review}")
    result = {
        "corpus": args.corpus.name,
        "sample": len(records),
        "sample_seed": args.seed,
        "datalab_seed": seed,
        "embedding": embedding.model_dump(),
        "labels_file": str(LABELS.relative_to(ROOT)),
        "settings": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print("\n| setting | flagged | read | agreed | agreement |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['flagged']} | {r['read']} | {r['agreed']} | {r['agreement']} |")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
