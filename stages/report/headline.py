r"""The run's headline numbers: one small flat metrics file, and the summary a person reads in ten seconds.

The report stage writes ``metrics/headline.json`` (:func:`headline`) from the inputs it has read; ``make demo`` ends
with ``python -m stages.report.headline metrics/headline.json --report metrics/report.html`` (:func:`summary`).
One flat object of few keys, each ``<group>.<name>``, so that ``dvc exp show --keep '(records|dropped|base|chat)\.'``
(a column a key) and ``dvc metrics diff --targets metrics/headline.json`` fit a screen:

* ``records.pulled``: the records pull read; ``records.curated``: those kept by moderate, then dedup;
  ``records.synthetic``: the synthetic pairs kept.
* ``dropped.<stage>`` for pull, moderate, dedup and synthesize: the sum of the stage's ``dropped_<reason>`` counts.
* ``<variant>.eval_loss``: the train stage's best validation loss.
* ``<variant>.<task>.<metric>_delta`` and ``<variant>.<task>.verdict``: per probed task, its main metric's delta
  (adapted - base) and the probe's verdict (``forgetting``, ``gain`` or ``no clear change``).
* ``<variant>.tasks_forgetting``: the probed tasks with a forgetting verdict.

An input that was not there leaves its keys out (the report names it). Values are rounded to 4 decimals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stages.core.io import StageError
from stages.report.inputs import DATA_STAGES, Run, drops_of

DIGITS = 4
GROUPS = ("records", "dropped")  # the run's groups of keys; every other group is a variant


def headline(run: Run) -> dict[str, Any]:
    """The flat headline metrics of `run` (keys as in the module doc, sorted).

    Raises:
        StageError: a variant or task name with a ``.`` (the keys' separator), or a variant named as a group.
    """
    out: dict[str, Any] = {}
    pull, dedup, synth = run.stages.get("pull"), run.stages.get("dedup"), run.stages.get("synthesize")
    for name, metrics, key in (("pulled", pull, "total"), ("curated", dedup, "kept"), ("synthetic", synth, "kept")):
        if metrics is not None:
            out[f"records.{name}"] = metrics[key]
    for stage in DATA_STAGES:
        if run.stages.get(stage) is not None:
            out[f"dropped.{stage}"] = sum(drops_of(run.stages[stage]).values())
    for v in run.variants:
        if v in GROUPS:
            raise StageError(f"variant {v!r}: metrics/headline.json keeps {list(GROUPS)} for the run's numbers")
        train = run.train.get(v)
        if train is not None and train.get("eval_loss") is not None:
            out[f"{_name(v)}.eval_loss"] = round(train["eval_loss"], DIGITS)
        tasks = run.probe.get(v)
        for task in tasks or []:
            key = f"{_name(v)}.{_name(task.task)}"
            main = task.metrics.get(task.main)
            if main is not None:
                out[f"{key}.{task.main}_delta"] = round(main["delta"], DIGITS)
            out[f"{key}.verdict"] = task.verdict
        if tasks is not None:
            out[f"{v}.tasks_forgetting"] = sum(task.forgetting for task in tasks)
    return dict(sorted(out.items()))


def _name(name: str) -> str:
    if "." in name:
        raise StageError(f"{name!r}: a variant or task name in metrics/headline.json must not contain '.'")
    return name


def summary(data: dict[str, Any], report: str | None = None) -> str:
    """A dozen lines from the headline metrics `data`: records, drops, then per variant its loss and verdicts."""
    get = data.get
    lines = [
        f"steep: {get('records.pulled', '?')} records pulled -> {get('records.curated', '?')} curated "
        f"+ {get('records.synthetic', '?')} synthetic pairs",
        "  dropped: " + ", ".join(f"{s} {get(f'dropped.{s}', '?')}" for s in DATA_STAGES),
    ]
    variants: dict[str, dict[str, dict[str, Any]]] = {}  # variant -> task -> field -> value
    for key, value in data.items():
        parts = key.split(".")
        if parts[0] in GROUPS:
            continue
        tasks = variants.setdefault(parts[0], {})
        if len(parts) == 3:
            tasks.setdefault(parts[1], {})[parts[2]] = value
    rows = []  # (variant, task, metric, delta, verdict); a variant's own line: (variant, None, ...)
    for v, tasks in variants.items():
        rows += [(v, None, "", "", "")] + [
            (v, t, *_delta(fields), fields.get("verdict", "?")) for t, fields in tasks.items()
        ]
    width = [max((len(str(r[i])) for r in rows if r[1] is not None), default=0) for i in range(5)]
    for v, task, metric, delta, verdict in rows:
        if task is None:
            loss, forgetting = get(f"{v}.eval_loss"), get(f"{v}.tasks_forgetting")
            line = f"  {v}: best validation loss {'not trained' if loss is None else f'{loss:.4f}'}"
            lines.append(line + ("" if forgetting is None else f", tasks forgetting {forgetting}"))
        else:
            lines.append(f"    {task:<{width[1]}}  {metric:<{width[2]}}  {delta:>{width[3]}}  {verdict}")
    if report:
        lines.append(f"report: {report}")
    return "\n".join(lines)


def _delta(fields: dict[str, Any]) -> tuple[str, str]:
    """(main metric, its delta signed to 3 decimals) of one task's headline fields, or ("", "")."""
    for key, value in fields.items():
        if key.endswith("_delta"):
            return key.removesuffix("_delta"), f"{value:+.3f}"
    return "", ""


def main(argv: list[str] | None = None) -> None:
    """Print the summary of a headline metrics file (``make demo`` ends with it)."""
    ap = argparse.ArgumentParser(description="Print the run's headline numbers in a dozen lines.")
    ap.add_argument("headline", type=Path, help="metrics/headline.json, as the report stage writes it")
    ap.add_argument("--report", help="the report's path, printed last")
    args = ap.parse_args(argv)
    try:
        data = json.loads(args.headline.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: {args.headline}: {e}; run `dvc repro report` first")
    print(summary(data, args.report))


if __name__ == "__main__":
    main()
