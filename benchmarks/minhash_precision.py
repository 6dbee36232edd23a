"""Precision of dedup's MinHash pass on real data (T0), and of pair rules that would make it precise.

On the T0 corpus (``--corpus``, default ``../shared/data/t0_train_50k.jsonl``: 55,185 prompt/completion lines of the
public T0 training mixture, as pull makes them, :mod:`_t0`) less the 1,400 empty outputs moderate drops, dedup's
own exact pass and MinHash pass (``dedup.text_keys``, ``minhash.NearDuplicateIndex`` and ``clustering.clusters``
with ``dedup.minhash`` and ``common.seed`` of ``params.yaml``: dedup.run's steps 1-2, in one process) drop 1,162
and 29,690 records (each LSH bucket verified as a star). Each MinHash drop has a survivor (the earliest record of
its cluster, the one kept in its place) and the estimated Jaccard with its closest match (the detail of the stage's
reject row).

Precision by reading: the drops in one seeded order (``random.Random("0:minhash_drops")``), the first
``--read`` of them read next to their survivor. ``dup`` = same task: same question on the same material and the
same or an equivalent answer, or a trivial rewording; ``not`` = another question or task on shared material, an
inverse task (first vs last step, question answering vs question generation), or another answer. Verdicts are in
``benchmarks/labels/t0_minhash.csv`` by (dropped id, survivor id), T0 line numbers for finding them, and a note in
our own words, never T0's text; ``--review FILE`` writes the sampled pairs that have no verdict yet, both records
clipped, to read. Precision = dup / read with a 95% Wilson interval, overall and by Jaccard band.

Rules tried (a MinHash pair of the stage, whole-text estimated Jaccard >= ``jaccard_threshold``, counts only if
the rule also holds; then clustered as the stage does): a higher whole-text threshold; the normalized outputs
equal; the outputs' own MinHash Jaccard (3-word shingles of the normalized output, same permutations) >= t;
prompt (instruction + input) and output Jaccard each >= t. Per rule: T0 drops, drops by band, and the precision
of a seeded sample of its own drops (``"0:minhash_rule:<rule>"``; a verdict read for the stage's sample
counts again when the same (dropped, survivor) pair comes up). Planted: the 390-record corpus of
``benchmarks/dedup_near_duplicates.py`` (102 planted copies, 8 hard-negative pairs), exact + MinHash with the
rule, scored with its ``score``; the stage itself (``dedup.run``, semantic off) is run once to check that this
script's exact + MinHash gives the stage's drops.

Run (from the project root; ~1.5 min on 2 shared cores)::

    .venv/bin/python benchmarks/minhash_precision.py [--corpus PATH] [--review sheet.txt]

Writes ``benchmarks/results/minhash_precision.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _t0  # noqa: E402
import dedup_near_duplicates as dn  # noqa: E402
from static_calibration import wilson  # noqa: E402

from stages.core import params as _params  # noqa: E402
from stages.core.records import record_text  # noqa: E402
from stages.curate import clustering, dedup, minhash  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "minhash_precision.json"
LABELS = ROOT / "benchmarks" / "labels" / "t0_minhash.csv"
LABEL_FIELDS = ["line_drop", "line_survivor", "id_drop", "id_survivor", "jaccard", "verdict", "note"]
BANDS = ((0.7, 0.8), (0.8, 0.9), (0.9, 1.0001))
PROMPT_FIELDS = ("instruction", "input")
READ = 60
READ_RULE = 40
READ_RECOMMENDED = 60  # the rule recommended below is read further, for a tighter interval
RECOMMENDED = "output_jaccard>=0.5"
SAMPLE_SEED = 0  # samples are drawn as moderation_precision.py draws its own: random.Random("0:<name>")


def band(j: float) -> str:
    """The Jaccard band of a drop's closest-match score: 0.7-0.8, 0.8-0.9 or 0.9-1.0."""
    for lo, hi in BANDS:
        if lo <= j < hi:
            return f"{lo:.1f}-{min(hi, 1.0):.1f}"
    return f"<{BANDS[0][0]}"


# --- dedup's exact and MinHash passes, with a pair rule ---------------------------


class Corpus:
    """Records in input order with dedup's exact keys and signatures, plus prompt and output signatures."""

    def __init__(self, records: list[dict[str, Any]], params: _params.Scoped) -> None:
        cfg, seed = params.dedup.minhash, params.common.seed
        self.records, self.params = records, params
        rows: list[tuple[str, bool, bool, np.ndarray, np.ndarray, bool]] = []
        for lo in range(0, len(records), dedup.SIGNATURE_BATCH_RECORDS):
            batch = records[lo : lo + dedup.SIGNATURE_BATCH_RECORDS]
            rows += dedup.text_keys(
                [(record_text(r), None, r["output"]) for r in batch], cfg.shingle_words, cfg.num_permutations, seed
            )
        self.keys = [r[0] for r in rows]
        self.has_words = np.array([r[1] for r in rows], dtype=bool)
        self.sigs = np.stack([r[3] for r in rows])  # (N, P) uint32
        self.out_norm = [minhash.normalize_text(r["output"]) for r in records]
        self.out_sigs = self._sigs(self.out_norm)
        self.prompt_sigs = self._sigs([minhash.normalize_text(record_text(r, PROMPT_FIELDS)) for r in records])

    def _sigs(self, normalized: list[str]) -> np.ndarray:
        cfg = self.params.dedup.minhash
        return minhash.signature_batch(normalized, cfg.shingle_words, cfg.num_permutations, self.params.common.seed)

    def pairs(self) -> tuple[list[int], list[tuple[int, int, float]], int]:
        """The stage's MinHash pairs among the exact pass's survivors: (members, pairs, exact drops)."""
        order = list(range(len(self.records)))
        first: dict[str, int] = {}
        exact_pairs = []
        for i, key in enumerate(self.keys):
            j = first.setdefault(key, i)
            if j != i:
                exact_pairs.append((j, i, 1.0))
        _, exact_dropped = clustering.clusters(order, exact_pairs, order)
        index = minhash.NearDuplicateIndex.build_from(
            self.sigs, self.has_words, self.params.dedup.minhash, self.params.common.seed
        )
        members = [i for i in order if i not in exact_dropped and index.has_text[i]]
        return members, index.pairs(np.array(members, dtype=np.int64)), len(exact_dropped)

    def output_jaccard(self, i: int, j: int) -> float:
        """Estimated Jaccard of the two outputs' shingle sets (1.0 for two outputs without words)."""
        return float((self.out_sigs[i] == self.out_sigs[j]).mean())

    def prompt_jaccard(self, i: int, j: int) -> float:
        """Estimated Jaccard of the two prompts' (instruction + input) shingle sets."""
        return float((self.prompt_sigs[i] == self.prompt_sigs[j]).mean())


def rules(c: Corpus) -> dict[str, Callable[[int, int, float], bool]]:
    """Pair rules, each applied on top of the stage's whole-text Jaccard >= jaccard_threshold."""
    return {
        "stage": lambda i, j, s: True,
        "whole_jaccard>=0.8": lambda i, j, s: s >= 0.8,
        "whole_jaccard>=0.9": lambda i, j, s: s >= 0.9,
        "output_equal": lambda i, j, s: c.out_norm[i] == c.out_norm[j],
        "output_jaccard>=0.5": lambda i, j, s: c.output_jaccard(i, j) >= 0.5,
        "output_jaccard>=0.7": lambda i, j, s: c.output_jaccard(i, j) >= 0.7,
        "prompt_and_output_jaccard>=0.7": lambda i, j, s: (
            c.prompt_jaccard(i, j) >= 0.7 and c.output_jaccard(i, j) >= 0.7
        ),
    }


def drops(members: list[int], pairs: list, keep: Callable[[int, int, float], bool]) -> dict[int, clustering.Match]:
    """MinHash drops when only the pairs `keep` accepts count (clustered as the stage does)."""
    order = range(max(members) + 1 if members else 0)
    _, dropped = clustering.clusters(members, [p for p in pairs if keep(*p)], order)
    return dropped


# --- reading ---------------------------------------------------------------------


def read_labels(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """{(id_drop, id_survivor): row} of the labels file (empty when it does not exist yet)."""
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", newline="") as f:
        return {(r["id_drop"], r["id_survivor"]): r for r in csv.DictReader(f) if r.get("verdict")}


def sample(dropped: dict[int, clustering.Match], name: str, n: int, seed: int) -> list[int]:
    """The first `n` drops in a seeded order of all of them."""
    pool = sorted(dropped)
    random.Random(f"{seed}:{name}").shuffle(pool)
    return pool[:n]


def precision(records: list, dropped: dict[int, clustering.Match], picked: list[int], labels: dict) -> dict[str, Any]:
    """dup / read over the sampled drops that have a verdict, overall and by Jaccard band."""
    by: dict[str, list[str]] = {}
    for d in picked:
        m = dropped[d]
        row = labels.get((records[d]["id"], records[m.survivor]["id"]))
        if row:
            by.setdefault("all", []).append(row["verdict"])
            by.setdefault(band(m.score), []).append(row["verdict"])
    out: dict[str, Any] = {"sampled": len(picked)}
    for key in ("all", *(band(lo) for lo, _ in BANDS)):
        v = by.get(key, [])
        k = v.count("dup")
        out[key] = {
            "read": len(v),
            "dup": k,
            "precision": round(k / len(v), 3) if v else None,
            "wilson95": wilson(k, len(v)),
        }
    return out


def clip(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= 2 * n else s[:n] + " [...] " + s[-n:]


def review(records: list, dropped: dict[int, clustering.Match], picked: list[int], labels: dict) -> str:
    """The sampled drops without a verdict, each next to its survivor and the words where their prompts differ."""
    out = []
    for d in picked:
        m = dropped[d]
        a, b = records[d], records[m.survivor]
        if (a["id"], b["id"]) in labels:
            continue
        diffs = []
        aw, bw = a["instruction"].split(), b["instruction"].split()
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, aw, bw, autojunk=False).get_opcodes():
            if op != "equal":
                diffs.append(f"    drop <{clip(' '.join(aw[i1:i2]), 100)}> survivor <{clip(' '.join(bw[j1:j2]), 100)}>")
        out.append(
            f"=== {a['meta']['line']},{b['meta']['line']},{a['id']},{b['id']},{m.score:.3f}\n"
            f"drop prompt: {clip(a['instruction'], 250)}\ndrop output: {clip(a['output'], 120)}\n"
            f"survivor prompt: {clip(b['instruction'], 250)}\nsurvivor output: {clip(b['output'], 120)}\n"
            "prompt differences:\n" + "\n".join(diffs[:6]) + "\n"
        )
    return "\n".join(out)


# --- the two corpora -------------------------------------------------------------


def t0(corpus: Path, params: _params.Scoped, labels: dict, review_to: Path | None) -> dict[str, Any]:
    """Drops and sampled precision of each rule on T0."""
    all_records = [_t0.record(line, {"line": i + 1}) for i, line in enumerate(_t0.lines(corpus))]
    records = [r for r in all_records if r["output"].strip()]  # moderate's only drop on T0: empty_output
    t = time.perf_counter()
    c = Corpus(records, params)
    members, pairs, exact_dropped = c.pairs()
    out: dict[str, Any] = {
        "records": len(all_records),
        "dropped_empty_output": len(all_records) - len(records),
        "dropped_exact": exact_dropped,
        "minhash_members": len(members),
        "minhash_pairs": len(pairs),
        "seconds": round(time.perf_counter() - t, 1),
        "rules": {},
    }
    seed = SAMPLE_SEED
    sheets = []
    for name, keep in rules(c).items():
        dropped = drops(members, pairs, keep)
        picked = (
            sample(dropped, "minhash_drops", READ, seed)
            if name == "stage"
            else sample(dropped, f"minhash_rule:{name}", READ_RECOMMENDED if name == RECOMMENDED else READ_RULE, seed)
        )
        same_out = sum(c.out_norm[d] == c.out_norm[m.survivor] for d, m in dropped.items())
        out["rules"][name] = {
            "dropped": len(dropped),
            "dropped_by_band": dict(sorted(Counter(band(m.score) for m in dropped.values()).items())),
            "dropped_same_output_as_survivor": same_out,
            "clusters": len({m.survivor for m in dropped.values()}),
            "precision": precision(records, dropped, picked, labels),
            "sample": [[records[d]["id"], records[dropped[d].survivor]["id"]] for d in picked],
        }
        sheets.append(f"##### rule {name}\n" + review(records, dropped, picked, labels))
    if review_to:
        review_to.write_text("\n".join(sheets), encoding="utf-8")
    return out


def planted(params: _params.Scoped) -> dict[str, Any]:
    """Each rule on the planted corpus (exact + MinHash), and the stage's own run to check this script against."""
    records, truth, info = dn.build_corpus(params.common.seed)
    hard_pairs = {x for pair in dn.HARD_NEGATIVES for x in pair}
    hard = {r["id"] for r in records if (r["instruction"], r["output"]) in hard_pairs}
    records = sorted(records, key=lambda r: (r["meta"]["source_index"], r["meta"]["row"]))  # input order
    c = Corpus(records, params)
    members, pairs, _ = c.pairs()
    exact = {r["id"] for r in records} - {records[i]["id"] for i in members}
    out: dict[str, Any] = {"corpus": info, "rules": {}}
    for name, keep in rules(c).items():
        dropped = {records[d]["id"]: "minhash_duplicate" for d in drops(members, pairs, keep)}
        out["rules"][name] = dn.score(truth, {**dropped, **dict.fromkeys(exact, "exact_duplicate")}, hard)
    with tempfile.TemporaryDirectory() as tmp:
        stage = dn.run_steep(records, Path(tmp), dedup__semantic__enable=False)
    mine = {records[d]["id"] for d in drops(members, pairs, rules(c)["stage"])} | exact
    out["stage_run_equals_script"] = set(stage) == mine
    return out


# --- output ----------------------------------------------------------------------


def print_tables(result: dict[str, Any]) -> None:
    t = result["t0"]
    print(
        f"\nT0: {t['records']:,} records, {t['dropped_empty_output']:,} empty outputs (moderate), "
        f"{t['dropped_exact']:,} exact, MinHash sees {t['minhash_members']:,} ({t['minhash_pairs']:,} pairs)\n"
    )
    bands = [band(lo) for lo, _ in BANDS]
    print("| rule | T0 dropped | " + " | ".join(f"dropped J {b}" for b in bands) + " | same output as survivor |")
    print("|---|---:|" + "---:|" * len(bands) + "---:|")
    for name, r in t["rules"].items():
        by = r["dropped_by_band"]
        print(
            f"| {name} | {r['dropped']:,} | "
            + " | ".join(f"{by.get(b, 0):,}" for b in bands)
            + f" | {r['dropped_same_output_as_survivor']:,} |"
        )

    def cell(p: dict[str, Any]) -> str:
        if not p["read"]:
            return "–"
        lo, hi = p["wilson95"]
        return f"{p['dup']}/{p['read']} = {p['precision']:.2f} ({lo:.2f}–{hi:.2f})"

    print("\n| rule | precision, all read | " + " | ".join(f"J {b}" for b in bands) + " |")
    print("|---|---|" + "---|" * len(bands))
    for name, r in t["rules"].items():
        p = r["precision"]
        print(f"| {name} | {cell(p['all'])} | " + " | ".join(cell(p[b]) for b in bands) + " |")
    if "planted" in result:
        pl = result["planted"]
        print(f"\nPlanted corpus, exact + MinHash (stage run equals this script: {pl['stage_run_equals_script']})\n")
        print("| rule | precision | recall | FP | hard negatives | whitespace/punct | reordered | word swaps |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, s in pl["rules"].items():
            k = s["per_kind"]
            print(
                f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['false_positives']} | "
                f"{s['hard_negatives_dropped']} | {k['whitespace_punct']['recall']:.2f} | "
                f"{k['reordered_sentences']['recall']:.2f} | {k['word_swaps']['recall']:.2f} |"
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=_t0.DEFAULT_CORPUS, help="the T0 JSONL (prompt, completion)")
    ap.add_argument("--labels", type=Path, default=LABELS, help="verdicts CSV")
    ap.add_argument("--review", type=Path, help="write the sampled drops without a verdict here, to read")
    ap.add_argument("--skip-planted", action="store_true", help="leave out the planted corpus")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not args.corpus.exists():
        sys.exit(
            f"T0 corpus not found at {args.corpus}: this benchmark measures MinHash on real data and needs it; "
            "pass --corpus PATH (a JSONL with 'prompt' and 'completion' per line)"
        )
    params = _params.load(ROOT / "params.yaml", [*dedup.PARAMS])
    labels = read_labels(args.labels)
    result: dict[str, Any] = {
        "corpus": args.corpus.name,
        "minhash": params.dedup.minhash.model_dump(),
        "seed": params.common.seed,
        "labels": str(args.labels.relative_to(ROOT)) if args.labels.is_relative_to(ROOT) else str(args.labels),
        "t0": t0(args.corpus, params, labels, args.review),
    }
    if not args.skip_planted:
        result["planted"] = planted(params)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print_tables(result)


if __name__ == "__main__":
    main()
