"""Probe: evaluate a variant's adapted model on the probe tasks and compare it with the baseline, item by item.

Inputs: ``--model`` (``models/<variant>/base``) and ``--adapter`` (``models/<variant>/adapter``), loaded as trained
    (``probe.precision: as_trained``: 4-bit NF4 base + LoRA adapter by default); ``--baseline``
    (``data/probe/baseline_<variant>.parquet``, the pretrained model's per-item results); the task files of
    ``probe.tasks``. The params ``probe``, ``common.seed`` (the bootstrap and the sign-flip test),
    ``template.<variant>`` and ``train.<variant>.quantization`` / ``compute_dtype``.
Outputs: ``--out`` (``data/probe/<variant>.parquet``): the baseline's columns (see ``stages/probe/baseline.py``)
    describing the ADAPTED model, plus ``base_prediction`` and ``base_scores`` (JSON) copied from the baseline row
    of the same
    (task, item); sorted by task then item.
    ``--metrics`` (``metrics/probe_<variant>.json``), flat enough for ``dvc metrics diff``::

        {"<task>": {"type": "<type>",
                    "<score>": {"base": x, "adapted": y, "delta": y - x, "ci_low": lo, "ci_high": hi}, ...,
                    "test": "mcnemar" | "sign_flip" | "sign_flip_nll",   # the main score's paired test
                    "n": items, "changed": items whose tested score changed,
                    "p": p, "p_adjusted": p after Holm over the variant's tasks,
                    "mde": the smallest change of the main score found with 80% power (None: not sizeable),
                    "forgetting": 0 | 1, "gain": 0 | 1},
         "tasks_forgetting": n, "tasks_gaining": n, "tasks_evaluated": n, "tasks_cached": n}

    The interval is a paired bootstrap over items (``probe.bootstrap_resamples`` resamples of item indices, the same
    for base and adapted, seeded with ``common.seed`` and the task name; each task score recomputed per resample;
    percentile interval at ``probe.confidence``): the range of the effect, not a test. The verdicts use each type's
    main score (multiple_choice acc, perplexity bits_per_byte (lower is better), generation rougeL, knowledge
    contains, chat_behaviour chat_ok) and its paired test (``stages/probe/significance.py``: exact McNemar for
    multiple choice; a paired sign-flip test otherwise, on the per-item nll for perplexity; exact or
    ``probe.permutation_resamples`` seeded sign patterns): forgetting when ``p_adjusted < probe.alpha`` and the main
    score is worse by more than ``probe.forgetting_threshold``; gain likewise, better. ``mde`` is at level
    ``probe.alpha / <number of tasks>``, two-sided. Floats are rounded to 6 decimals.
Cache: ``--cache`` (``.steep_cache/probe``), as for the baseline (the adapter's files are part of the key).
Run: ``dvc repro probe@chat`` (= ``python -m stages.probe.probe --params params.yaml --variant chat
    --model models/chat/base --adapter models/chat/adapter --baseline data/probe/baseline_chat.parquet
    --out data/probe/chat.parquet
    --metrics metrics/probe_chat.json --cache .steep_cache/probe``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.probe import engine as _engine
from stages.probe import settings as _settings
from stages.probe import significance as _sig
from stages.probe import stats as _stats
from stages.probe import tables as _tables
from stages.probe import tasks as _tasks
from stages.probe.types import SHOWCASE

log = logging.getLogger("steep.probe")


STAGE = cli.Stage(
    params=(
        "common.seed",
        "probe",
        "template.${key}.format",
        "template.${key}.prompts",
        "train.${key}.quantization",
        "train.${key}.compute_dtype",
    ),
    inputs={
        "model": "the variant's base checkpoint directory",
        "adapter": "the variant's adapter directory",
        "baseline": "the baseline's per-item results (Parquet)",
    },
    outputs={"out": "per-item results of the adapted model (Parquet)"},
    options={"cache": "per-task result cache directory"},
    local_paths=_settings.local_paths,
)
PARAMS = list(STAGE.params)


def check_baseline(tasks: list[_tasks.TaskData], showcase: int, base: list[_tables.Row], baseline: Path) -> None:
    """Refuse a baseline made from other task files or tasks (before any model is loaded)."""
    want = {(t.name, index, t.type, t.spec.reference_of(it)) for t in tasks for index, it in t.items}
    want |= {(SHOWCASE, i, SHOWCASE, "") for i in range(showcase)}
    have = {(r["task"], r["item"], r["type"], r["reference"]) for r in base}
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        first = f"it lacks {missing[0][:2]}" if missing else f"it has {extra[0][:2]}, not among the current items"
        raise StageError(
            f"{baseline} does not match the current tasks and params ({len(missing)} items missing, {len(extra)} "
            f"extra; {first}); rerun `dvc repro baseline` first"
        )


def _pair(
    tasks: list[_tasks.TaskData], adapted: list[_tables.Row], base: list[_tables.Row], baseline: Path
) -> list[_tables.Row]:
    """Adapted rows with base_prediction / base_scores of the same (task, item); a stale baseline is a StageError."""
    by_key = {(r["task"], r["item"]): r for r in base}
    types = {t.name: t.type for t in tasks} | {SHOWCASE: SHOWCASE}
    stale = f"{baseline} does not match the current tasks and params; rerun `dvc repro baseline` first"
    out = []
    for r in adapted:
        b = by_key.get((r["task"], r["item"]))
        if b is None or b["type"] != types[r["task"]] or b["reference"] != r["reference"] or b["prompt"] != r["prompt"]:
            what = "no row" if b is None else f"a different row (type {b['type']!r}, reference {b['reference']!r})"
            raise StageError(f"{stale}: it has {what} for task {r['task']!r} item {r['item']}")
        out.append(r | {"base_prediction": b["prediction"], "base_scores": b["scores"]})
    extra = sorted({r["task"] for r in base} - {r["task"] for r in adapted})
    if extra or len(base) != len(adapted):
        raise StageError(f"{stale}: it has {len(base)} rows for tasks {sorted({r['task'] for r in base})}, "
                         f"the probe {len(adapted)} (tasks only in the baseline: {extra})")  # fmt: skip
    return out


def run(
    params: _params.Scoped, *, variant: str, inputs: dict[str, Path], outputs: dict[str, Path], cache: Path
) -> dict[str, Any]:
    """Evaluate the adapted model, pair its rows with the baseline's, write them; return the comparison metrics.

    Args:
        params: the view of :data:`PARAMS` (``STAGE.keys(variant)``).
        variant: the variant (base, chat).
        inputs: ``{"model": <base checkpoint dir>, "adapter": <adapter dir>, "baseline": <baseline Parquet>}``.
        outputs: ``{"out": <per-item Parquet>}``.
        cache: the per-task result cache.

    Returns:
        The metrics described in the module docstring.
    """
    s = _settings.settings(params, variant)
    p = params.probe
    seed = params.common.seed
    tasks = _tasks.read_tasks(s.tasks)
    base = _tables.read_rows(Path(inputs["baseline"]))
    check_baseline(tasks, len(s.showcase_prompts), base, Path(inputs["baseline"]))
    engine = _engine.Engine(s, Path(inputs["model"]), Path(inputs["adapter"]))
    adapted, counts = _engine.evaluate(engine, tasks, Path(cache))
    rows = _pair(tasks, adapted, base, Path(inputs["baseline"]))
    metrics: dict[str, Any] = {}
    for t in tasks:
        mine = [r for r in rows if r["task"] == t.name]
        base_rows = [r | {"prediction": r["base_prediction"], "scores": r["base_scores"]} for r in mine]
        metrics[t.name] = {"type": t.type} | _stats.compare(
            t.name,
            t.type,
            base_rows,
            mine,
            seed=seed,
            resamples=p.bootstrap_resamples,
            confidence=p.confidence,
            permutation_resamples=p.permutation_resamples,
            mde_alpha=p.alpha / len(tasks),
        )
    _sig.decide(metrics, alpha=p.alpha, threshold=p.forgetting_threshold)
    for t in tasks:
        m, main = metrics[t.name], t.spec.main
        mde = "?" if m["mde"] is None else f"{m['mde']:.4f}"
        verdict = "FORGETTING" if m["forgetting"] else "gain" if m["gain"] else f"no clear change (mde {mde})"
        log.info("%s %s: base %.4f -> adapted %.4f (delta %+.4f, %g%% CI [%+.4f, %+.4f]; %s p %.4g, Holm %.4g, %d "
                 "of %d items changed): %s", t.name, main, m[main]["base"], m[main]["adapted"], m[main]["delta"],
                 100 * p.confidence, m[main]["ci_low"], m[main]["ci_high"], m["test"], m["p"], m["p_adjusted"],
                 m["changed"], m["n"], verdict)  # fmt: skip
    with _io.atomic_outputs(outputs["out"]) as (tmp,):
        _io.write_table(tmp, _tables.to_table(rows, _tables.PROBE_SCHEMA))
    metrics["tasks_forgetting"] = sum(metrics[t.name]["forgetting"] for t in tasks)
    metrics["tasks_gaining"] = sum(metrics[t.name]["gain"] for t in tasks)
    return metrics | counts


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the probe stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
