"""Reading the report's inputs: metrics JSON, rejected, flagged and synthetic records, loss curves, probe results.

Every input is optional: :class:`Inputs` remembers each path asked for and whether it was there (the report lists
them, and names a missing one where its section would be). A file that is there but malformed stops the stage with a
:class:`StageError` naming the file (and the row or task) and what was expected.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.core.io import StageError, read_parquet
from stages.core.records import REJECT_SCHEMA, SCHEMA
from stages.probe.tables import PROBE_SCHEMA
from stages.probe.types import MAIN_METRIC

DATA_STAGES = ("pull", "moderate", "dedup", "synthesize")
VARIANT_STAGES = ("template", "tokenize")
REJECT_STAGES = ("moderate", "dedup", "synthesize")
# The probe's task types, in the order the report lists their tasks (the main metric per type: MAIN_METRIC).
TYPE_ORDER = tuple(MAIN_METRIC)
PROBE_COLUMNS = tuple(PROBE_SCHEMA.names)
NO_CHANGE = "no clear change"


def shown_path(path: Path) -> str:
    """`path` as the report shows it: relative to the working directory (the project root under DVC)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


class Inputs:
    """Reads the inputs, remembering every path asked for and whether it was there (the report's input list)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []  # (path shown, what it is, found)

    def _exists(self, path: Path, what: str) -> bool:
        found = path.is_file()
        self.seen.append((shown_path(path), what, found))
        return found

    @property
    def missing(self) -> list[str]:
        """The inputs asked for and not there (paths as shown), in the order asked."""
        return [p for p, _, found in self.seen if not found]

    def json(self, path: Path, what: str) -> dict[str, Any] | None:
        """A metrics JSON object, or None when the file is not there."""
        if not self._exists(path, what):
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StageError(f"{path}: not valid JSON ({e}); rerun the stage that writes it") from None
        if not isinstance(data, dict):
            raise StageError(
                f"{path}: expected a JSON object of metrics, got {type(data).__name__}; rerun the stage that writes it"
            )
        return data

    def tsv(self, path: Path, what: str) -> list[tuple[int, float]] | None:
        """A dvclive curve: (step, value) rows of a tab-separated file with columns ``step`` and ``loss``."""
        if not self._exists(path, what):
            return None
        points = []
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if not reader.fieldnames or not {"step", "loss"} <= set(reader.fieldnames):
                raise StageError(
                    f"{path}: expected a dvclive TSV with columns 'step' and 'loss', got header {reader.fieldnames}; "
                    "rerun the train stage"
                )
            for line, row in enumerate(reader, start=2):
                try:
                    points.append((int(row["step"]), float(row["loss"])))
                except (TypeError, ValueError):
                    raise StageError(
                        f"{path}:{line}: expected an integer step and a number loss, got {row['step']!r}, "
                        f"{row['loss']!r}; rerun the train stage"
                    ) from None
        return sorted(points)

    def table(
        self, path: Path, what: str, columns: tuple[str, ...], json_columns: tuple[str, ...]
    ) -> list[dict[str, Any]] | None:
        """Rows of a Parquet file with `columns`, the `json_columns` parsed; None when the file is not there."""
        if not self._exists(path, what):
            return None
        rows = read_parquet(path, columns, "Parquet", "rerun the stage that writes it").to_pylist()
        for n, row in enumerate(rows):
            name = f"id {row['id']}" if "id" in row else f"task {row.get('task')!r} item {row.get('item')}"
            for col in json_columns:
                try:
                    value = json.loads(row[col]) if row[col] else {}
                except (TypeError, json.JSONDecodeError):
                    value = None
                if not isinstance(value, dict):
                    raise StageError(
                        f"{path}: row {n} ({name}): column {col!r} is not a JSON object (got {str(row[col])[:60]!r}); "
                        "rerun the stage that writes it"
                    )
                row[col] = value
        return rows


@dataclass
class TaskResult:
    """One probe task of one variant, from ``metrics/probe_<v>.json`` (or the baseline's metrics alone)."""

    task: str
    type: str  # one of TYPE_ORDER, as the probe wrote it
    metrics: dict[str, dict[str, Any]]  # metric -> {base, adapted, delta, ci_low, ci_high}
    test: str | None = None  # the main score's paired test (mcnemar, sign_flip, sign_flip_nll)
    p: float | None = None
    p_adjusted: float | None = None  # Holm over the variant's tasks: the verdict's
    mde: float | None = None  # the smallest change of the main score the test detects (80% power)
    forgetting: bool = False
    gain: bool = False

    @property
    def main(self) -> str:
        """The main metric of the task's type, the one the verdicts are taken on."""
        return MAIN_METRIC[self.type]

    @property
    def verdict(self) -> str:
        """``forgetting``, ``gain`` or :data:`NO_CHANGE`, as the probe flagged the task."""
        return "forgetting" if self.forgetting else "gain" if self.gain else NO_CHANGE


def task_type(entry: dict[str, Any], path: Path, task: str) -> str:
    """The type the probe (or baseline) stage wrote for `task` in its metrics file `path`.

    Raises:
        StageError: the entry has no ``"type"``, or one the probe does not know.
    """
    if "type" not in entry:
        raise StageError(
            f'{path}: task {task!r} has no "type"; expected one of {list(TYPE_ORDER)} beside its metrics, as the '
            "probe stages write it; rerun `dvc repro probe`"
        )
    if entry["type"] not in TYPE_ORDER:
        raise StageError(
            f"{path}: task {task!r} has type {entry['type']!r}; expected one of {list(TYPE_ORDER)}; "
            "rerun `dvc repro probe`"
        )
    return entry["type"]


def _task_order(result: TaskResult) -> tuple[int, str]:
    return TYPE_ORDER.index(result.type), result.task


def parse_probe(data: dict[str, Any], path: Path) -> list[TaskResult]:
    """The tasks of a ``probe_<v>.json`` at `path`, ordered by type, then name.

    Raises:
        StageError: a task without its type, or a metric without its base, adapted and delta numbers.
    """
    results = []
    for task, entry in data.items():
        if not isinstance(entry, dict):
            continue  # tasks_forgetting, tasks_evaluated, ...
        metrics = {}
        for name, value in entry.items():
            if not isinstance(value, dict):
                continue
            bad = [k for k in ("base", "adapted", "delta") if not isinstance(value.get(k), int | float)]
            if bad:
                raise StageError(
                    f"{path}: {task}.{name} lacks numbers for {bad}; expected "
                    '{"base": x, "adapted": y, "delta": y-x, "ci_low": lo, "ci_high": hi} as the probe stage '
                    "writes; rerun `dvc repro probe`"
                )
            metrics[name] = value
        results.append(
            TaskResult(
                task=task,
                type=task_type(entry, path, task),
                metrics=metrics,
                test=entry.get("test"),
                p=entry.get("p"),
                p_adjusted=entry.get("p_adjusted"),
                mde=entry.get("mde"),
                forgetting=bool(entry.get("forgetting")),
                gain=bool(entry.get("gain")),
            )
        )
    return sorted(results, key=_task_order)


def parse_baseline(data: dict[str, Any], path: Path) -> list[TaskResult]:
    """The tasks of a ``baseline_<v>.json`` at `path` (the pretrained model's scores alone), ordered as the probe's.

    Raises:
        StageError: a task without its type.
    """
    results = []
    for task, entry in data.items():
        if isinstance(entry, dict):
            metrics = {k: {"base": v} for k, v in entry.items() if isinstance(v, int | float) and k != "n"}
            results.append(TaskResult(task=task, type=task_type(entry, path, task), metrics=metrics))
    return sorted(results, key=_task_order)


@dataclass
class Run:
    """Everything the report shows, read from the inputs (None: the input was not there)."""

    variants: list[str]
    stages: dict[str, dict[str, Any] | None]  # "pull", ..., "template@base", "tokenize@chat"
    rejects: dict[str, list[dict] | None]
    flagged: list[dict] | None  # moderate's kept records that carry a flag
    synthetic: list[dict] | None
    train: dict[str, dict[str, Any] | None]
    curves: dict[str, dict[str, list[tuple[int, float]] | None]]  # variant -> train|eval -> points
    baseline: dict[str, list[TaskResult] | None]
    probe: dict[str, list[TaskResult] | None]
    items: dict[str, list[dict] | None]
    paths: dict[str, str]  # what -> path shown, for the missing-input notes


def variant_paths(v: str, inputs: Mapping[str, Path]) -> dict[str, Path]:
    """Every file the report reads for variant `v`, by key (``train@chat``, ``eval_loss@chat``, ...)."""
    mdir, ldir, pdir = Path(inputs["metrics_dir"]), Path(inputs["live_dir"]), Path(inputs["probe_dir"])
    live = ldir / f"train_{v}" / "plots" / "metrics"
    paths = {f"{stage}@{v}": mdir / f"{stage}_{v}.json" for stage in (*VARIANT_STAGES, "train", "baseline", "probe")}
    paths |= {f"{split}_loss@{v}": live / split / "loss.tsv" for split in ("train", "eval")}
    paths[f"items@{v}"] = pdir / f"{v}.parquet"
    return paths


def read_run(variants: list[str], inputs: dict[str, Path], reader: Inputs) -> Run:
    """Read every input the report knows, for `variants` in order (missing ones are None).

    Args:
        variants: the variants whose per-variant inputs are read.
        inputs: ``metrics_dir``, ``rejects_dir``, ``moderated``, ``synthetic``, ``live_dir``, ``probe_dir``.
        reader: records every path asked for (the report's input list).

    Raises:
        StageError: an input that is there but malformed.
    """
    mdir, rdir = inputs["metrics_dir"], inputs["rejects_dir"]
    paths: dict[str, str] = {}

    def at(key: str, path: Path) -> Path:
        paths[key] = shown_path(path)
        return path

    per = {v: variant_paths(v, inputs) for v in variants}
    stages: dict[str, dict[str, Any] | None] = {}
    for stage in DATA_STAGES:
        stages[stage] = reader.json(at(stage, mdir / f"{stage}.json"), f"{stage} metrics")
    for stage in VARIANT_STAGES:
        for v in variants:
            stages[f"{stage}@{v}"] = reader.json(at(f"{stage}@{v}", per[v][f"{stage}@{v}"]), f"{stage}@{v} metrics")
    rejects = {
        s: reader.table(
            at(f"rejects@{s}", rdir / f"{s}.parquet"), f"{s} rejects", tuple(REJECT_SCHEMA.names), ("meta",)
        )
        for s in REJECT_STAGES
    }
    moderated = reader.table(at("moderated", inputs["moderated"]), "moderated records", tuple(SCHEMA.names), ("meta",))
    flagged = None if moderated is None else [r for r in moderated if r["meta"].get("moderate", {}).get("flags")]
    synthetic = reader.table(at("synthetic", inputs["synthetic"]), "synthetic pairs", tuple(SCHEMA.names), ("meta",))
    train, curves, baseline, probe, items = {}, {}, {}, {}, {}
    for v in variants:
        train[v] = reader.json(at(f"train@{v}", per[v][f"train@{v}"]), f"train@{v} metrics")
        curves[v] = {
            split: reader.tsv(at(f"{split}_loss@{v}", per[v][f"{split}_loss@{v}"]), f"train@{v} {split} loss")
            for split in ("train", "eval")
        }
        items[v] = reader.table(
            at(f"items@{v}", per[v][f"items@{v}"]), f"probe@{v} per item", PROBE_COLUMNS, ("scores", "base_scores")
        )
        path = at(f"baseline@{v}", per[v][f"baseline@{v}"])
        data = reader.json(path, f"baseline@{v} metrics")
        baseline[v] = None if data is None else parse_baseline(data, path)
        path = at(f"probe@{v}", per[v][f"probe@{v}"])
        data = reader.json(path, f"probe@{v} metrics")
        probe[v] = None if data is None else parse_probe(data, path)
    return Run(variants, stages, rejects, flagged, synthetic, train, curves, baseline, probe, items, paths)


def not_found(run: Run, key: str) -> str:
    """The note for a missing input: its path, as code, and ``not found``."""
    return f"`{run.paths[key]}` not found"


def drops_of(metrics: dict[str, Any]) -> dict[str, int]:
    """A stage's drops per reason code, from its ``dropped_<reason>`` counts."""
    return {k.removeprefix("dropped_"): v for k, v in metrics.items() if k.startswith("dropped_")}
