"""Report: one readable page on the whole run: data funnel, rejects, synthetic pairs, training, forgetting and gain.

Inputs (every path comes from the command line; every input is optional, and one that is not there is named in the
report instead of stopping it; a file that is there but malformed stops the stage, naming the file):

* ``--metrics-dir`` (``metrics``): the data stages' ``pull.json``, ``moderate.json``, ``dedup.json``,
  ``synthesize.json`` (``total``, ``kept``, ``dropped_<reason>`` and extra counts), and per variant
  ``template_<v>.json``, ``tokenize_<v>.json``, ``train_<v>.json``, ``baseline_<v>.json`` and ``probe_<v>.json``
  (the probe's base/adapted/delta/CI per task and metric, McNemar p, forgetting and gain flags).
* ``--rejects-dir`` (``data/rejected``): ``moderate.parquet``, ``dedup.parquet``, ``synthesize.parquet``, rejected
  records (``stages.core.records.REJECT_SCHEMA``: the record plus ``stage``, ``reason``, ``detail``).
* ``--synthetic`` (``data/synthetic.parquet``): the synthesize stage's kept pairs (records; ``meta.synthesize`` holds
  their provenance: the generator, ``documents`` or ``self_instruct``, and the chunk or seeds).
* ``--live-dir`` (``dvclive``): ``train_<v>/plots/metrics/train/loss.tsv`` and ``.../eval/loss.tsv`` (``step``,
  ``loss``), the training and validation loss curves.
* ``--probe-dir`` (``data/probe``): ``<v>.parquet``, probe@<v>'s per-item table (task, type, item, prompt, reference,
  prediction, scores, base_prediction, base_scores; scores as JSON).
* ``--variants``: the variants reported on, in this order (``base chat``). Params: ``report`` only.

Outputs: ``--md`` (``metrics/report.md``), Markdown tables; ``--html`` (``metrics/report.html``), one self-contained
page with the same content and the plots as inline SVG (data funnel, drops per reason, training and validation loss,
forgetting deltas with their intervals). Same inputs, same bytes: stable order everywhere, no timestamps, no absolute
paths, matplotlib's SVG ids seeded (``svg.hashsalt``) and its date left out.

Run: ``dvc repro report`` (= ``python -m stages.report.report --params params.yaml --variants base chat
    --metrics-dir metrics --rejects-dir data/rejected --synthetic data/synthetic.parquet --live-dir dvclive
    --probe-dir data/probe --md metrics/report.md --html metrics/report.html``).

Sections: summary; data funnel (records in, kept and dropped per stage; drops per reason; the other counts each
stage reports); rejected examples (``report.max_examples_per_reason`` per reason, clipped); decontamination (the
records dedup dropped for overlapping the held-out reference files, per file and method); synthetic pairs (per
generator, ``report.max_examples_per_task`` kept pairs with their provenance); training (per variant, and the loss
curves); probe (the forgetting table: each task's main metric, base, adapted, delta, interval, McNemar p, verdict;
every metric; knowledge-gain examples, questions the base model missed and the adapted one answers first;
showcase prompts and generation items side by side). Last, the list of inputs read and not found.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.report import Report
from stages.core.records import REJECT_SCHEMA, SCHEMA
from stages.probe import engine as _probe

log = logging.getLogger("steep.report")

PARAMS = ["report"]

DATA_STAGES = ("pull", "moderate", "dedup", "synthesize")
VARIANT_STAGES = ("template", "tokenize")
REJECT_STAGES = ("moderate", "dedup", "synthesize")
# Tasks in the order of their type (the probe's types; the main metric per type is _probe.MAIN_METRIC).
TYPE_ORDER = (*_probe.MAIN_METRIC, "unknown")
PROBE_COLUMNS = tuple(_probe.PROBE_SCHEMA.names)
NO_CHANGE = "no clear change"
# Characters kept per cell: a rejected prompt, a one-line excerpt (rejected response, detail) and a generated answer.
CLIP_PROMPT = 100
CLIP_SHORT = 160
CLIP_LONG = 600
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
# The rendered user turn inside a prompt, for showing the question a templated prompt asks (Alpaca, ChatML,
# Gemma, Llama 3): display only; a prompt none of them matches is shown whole.
_USER_TURN = (
    re.compile(r"### Instruction:\n(.*?)\n\n### (?:Input|Response):", re.S),
    re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S),
    re.compile(r"<start_of_turn>user\n(.*?)<end_of_turn>", re.S),
    re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S),
)
_OVERLAP = re.compile(r"overlaps (?P<file>.+?):(?P<line>\d+) \((?P<method>[a-z_]+)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


# --- the document: blocks rendered to Markdown and to HTML ------------------------------------------------------------


class Code(str):
    """A table cell shown as code (an id, a path)."""


@dataclass
class Block:
    """One piece of the report.

    Attributes:
        kind: ``h`` (heading), ``p`` (paragraph), ``ul`` (bullet list), ``table`` or ``plot``.
        text: the heading or paragraph text (``p``, ``ul`` items: Markdown with only `code` and **bold**).
        level: the heading level.
        items: the bullet items.
        header: the table's column names.
        rows: the table's cells (plain text, or :class:`Code`); newlines are kept as line breaks.
        svg: the plot (an ``<svg>`` element); Markdown leaves plots out.
    """

    kind: str
    text: str = ""
    level: int = 2
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    svg: str = ""


class Doc:
    """The report as a list of blocks, added in reading order."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(Block("h", text=text, level=level))

    def p(self, text: str) -> None:
        self.blocks.append(Block("p", text=text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(Block("ul", items=list(items)))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(Block("table", header=list(header), rows=[list(r) for r in rows]))

    def plot(self, svg: str, caption: str) -> None:
        self.blocks.append(Block("plot", text=caption, svg=svg))


_NUMERIC = re.compile(r"^(?:<?[+-]?[\d,]*\.?\d+(?:e[+-]?\d+)?%?|—|nan|\[.*\])$")


def _right_aligned(rows: list[list[str]], col: int) -> bool:
    cells = [r[col] for r in rows if r[col] != ""]
    return bool(cells) and all(not isinstance(c, Code) and _NUMERIC.match(c) for c in cells)


def _md_cell(cell: str) -> str:
    text = str(cell)
    if isinstance(cell, Code):
        return f"`{text}`" if text else ""
    # Only a pipe and a line break can break a table row; the rest of the text is left as written, except that a
    # <EMAIL> placeholder outside `code` must not become an HTML tag.
    parts = re.split(r"(`[^`\n]*`)", text.replace("|", "\\|"))
    text = "".join(part if i % 2 else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", part) for i, part in enumerate(parts))
    return text.replace("\n", "<br>")


def to_markdown(doc: Doc) -> str:
    """Render the blocks as GitHub-flavoured Markdown (plots are left out: they are in the HTML page)."""
    parts: list[str] = []
    for b in doc.blocks:
        if b.kind == "h":
            parts.append("#" * b.level + " " + b.text)
        elif b.kind == "p":
            parts.append(b.text)
        elif b.kind == "ul":
            parts.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |"]
            align = ["---:" if _right_aligned(b.rows, i) else "---" for i in range(len(b.header))]
            lines.append("| " + " | ".join(align) + " |")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    """The Markdown subset of paragraphs (`code`, **bold**) as HTML."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\[([^\]]+)\]\((#[a-z0-9-]+)\)", r'<a href="\2">\1</a>', out)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem; margin: 2rem auto;
  padding: 0 1rem; color: #222; line-height: 1.45; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .88rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; font-size: .85em; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; }
figcaption { font-size: .85rem; color: #555; }
""".strip()


def to_html(doc: Doc, title: str) -> str:
    """Render the blocks as one self-contained HTML page (inline CSS and SVG, nothing fetched)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_CSS}\n</style></head>",
        "<body>",
    ]
    for b in doc.blocks:
        if b.kind == "h":
            parts.append(f'<h{b.level} id="{_slug(b.text)}">{_inline_html(b.text)}</h{b.level}>')
        elif b.kind == "p":
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif b.kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            nums = [_right_aligned(b.rows, i) for i in range(len(b.header))]
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = []
            for row in b.rows:
                cells = []
                for cell, num in zip(row, nums, strict=True):
                    text = html.escape(str(cell)).replace("\n", "<br>")
                    text = f"<code>{text}</code>" if isinstance(cell, Code) and text else text
                    cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
                body.append("<tr>" + "".join(cells) + "</tr>")
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>")
        elif b.kind == "plot":
            parts.append(f"<figure>\n{b.svg.strip()}\n<figcaption>{_inline_html(b.text)}</figcaption></figure>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


# --- formatting -------------------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3, sign: bool = False) -> str:
    """A float with fixed decimals ("—" when absent)."""
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _count(value: Any) -> str:
    """A metric value as a reader wants it: thousands separators, 4 significant digits, yes/no."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def _p_value(p: Any) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _visible(text: str) -> str:
    """Control characters written out (``\\x07``): a reject for a control character shows which."""
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def clip(text: str, limit: int, one_line: bool = True) -> str:
    """`text` cut to `limit` characters (an ellipsis marks the cut); `one_line` shows line breaks as ``↵``."""
    text = _visible(text.strip())
    text = re.sub(r"[ \t]*\n[ \t]*", " ↵ ", text) if one_line else re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def question_of(prompt: str) -> str:
    """The user's text inside a templated prompt (the last user turn), or the prompt itself when no known template
    (Alpaca, ChatML, Gemma, Llama 3) matches."""
    for pattern in _USER_TURN:
        found = pattern.findall(prompt)
        if found:
            return found[-1].strip()
    return prompt.strip()


# --- reading the inputs -----------------------------------------------------------------------------------------------


def _shown(path: Path) -> str:
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
        self.seen.append((_shown(path), what, found))
        return found

    @property
    def missing(self) -> list[str]:
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
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise StageError(f"{path}: cannot read Parquet ({e}); rerun the stage that writes it") from None
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise StageError(f"{path}: missing columns {missing}; expected {list(columns)}; rerun the stage")
        rows = table.select(list(columns)).to_pylist()
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
    type: str
    metrics: dict[str, dict[str, Any]]  # metric -> {base, adapted, delta, ci_low, ci_high}
    mcnemar_p: float | None = None
    forgetting: bool = False
    gain: bool = False

    @property
    def main(self) -> str | None:
        """The main metric, the one the verdicts are taken on (None for an unknown type)."""
        return _probe.MAIN_METRIC.get(self.type)

    @property
    def verdict(self) -> str:
        return "forgetting" if self.forgetting else "gain" if self.gain else NO_CHANGE


def infer_type(metric_names: set[str]) -> str:
    """A task's type from the metrics its results hold (when no per-item table says it)."""
    if "acc" in metric_names:
        return "multiple_choice"
    if "bits_per_byte" in metric_names:
        return "perplexity"
    if "contains" in metric_names:
        return "knowledge"
    if "rougeL" in metric_names:
        return "generation"
    return "unknown"


def _task_order(result: TaskResult) -> tuple[int, str]:
    return TYPE_ORDER.index(result.type) if result.type in TYPE_ORDER else len(TYPE_ORDER), result.task


def parse_probe(data: dict[str, Any], path: Path, types: dict[str, str]) -> list[TaskResult]:
    """The tasks of a ``probe_<v>.json``; `types` maps task -> type from the per-item table where there is one."""
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
                type=types.get(task) or infer_type(set(metrics)),
                metrics=metrics,
                mcnemar_p=entry.get("mcnemar_p"),
                forgetting=bool(entry.get("forgetting")),
                gain=bool(entry.get("gain")),
            )
        )
    return sorted(results, key=_task_order)


def parse_baseline(data: dict[str, Any], types: dict[str, str]) -> list[TaskResult]:
    """The tasks of a ``baseline_<v>.json`` (the pretrained model's scores alone)."""
    results = []
    for task, entry in data.items():
        if isinstance(entry, dict):
            metrics = {k: {"base": v} for k, v in entry.items() if isinstance(v, int | float) and k != "n"}
            results.append(TaskResult(task=task, type=types.get(task) or infer_type(set(metrics)), metrics=metrics))
    return sorted(results, key=_task_order)


@dataclass
class Run:
    """Everything the report shows, read from the inputs (None: the input was not there)."""

    variants: list[str]
    stages: dict[str, dict[str, Any] | None]  # "pull", ..., "template@base", "tokenize@chat"
    rejects: dict[str, list[dict] | None]
    synthetic: list[dict] | None
    train: dict[str, dict[str, Any] | None]
    curves: dict[str, dict[str, list[tuple[int, float]] | None]]  # variant -> train|eval -> points
    baseline: dict[str, list[TaskResult] | None]
    probe: dict[str, list[TaskResult] | None]
    items: dict[str, list[dict] | None]
    paths: dict[str, str]  # what -> path shown, for the missing-input notes


def read_run(variants: list[str], inputs: dict[str, Path], reader: Inputs) -> Run:
    """Read every input the report knows (missing ones are None)."""
    mdir, rdir, ldir, pdir = inputs["metrics_dir"], inputs["rejects_dir"], inputs["live_dir"], inputs["probe_dir"]
    paths: dict[str, str] = {}

    def at(key: str, path: Path) -> Path:
        paths[key] = _shown(path)
        return path

    stages: dict[str, dict[str, Any] | None] = {}
    for stage in DATA_STAGES:
        stages[stage] = reader.json(at(stage, mdir / f"{stage}.json"), f"{stage} metrics")
    for stage in VARIANT_STAGES:
        for v in variants:
            stages[f"{stage}@{v}"] = reader.json(at(f"{stage}@{v}", mdir / f"{stage}_{v}.json"), f"{stage}@{v} metrics")
    rejects = {
        s: reader.table(
            at(f"rejects@{s}", rdir / f"{s}.parquet"), f"{s} rejects", tuple(REJECT_SCHEMA.names), ("meta",)
        )
        for s in REJECT_STAGES
    }
    synthetic = reader.table(at("synthetic", inputs["synthetic"]), "synthetic pairs", tuple(SCHEMA.names), ("meta",))
    train, curves, baseline, probe, items = {}, {}, {}, {}, {}
    for v in variants:
        train[v] = reader.json(at(f"train@{v}", mdir / f"train_{v}.json"), f"train@{v} metrics")
        live = ldir / f"train_{v}" / "plots" / "metrics"
        curves[v] = {
            split: reader.tsv(at(f"{split}_loss@{v}", live / split / "loss.tsv"), f"train@{v} {split} loss")
            for split in ("train", "eval")
        }
        items[v] = reader.table(
            at(f"items@{v}", pdir / f"{v}.parquet"), f"probe@{v} per item", PROBE_COLUMNS, ("scores", "base_scores")
        )
        types = {r["task"]: r["type"] for r in items[v] or []}
        data = reader.json(at(f"baseline@{v}", mdir / f"baseline_{v}.json"), f"baseline@{v} metrics")
        baseline[v] = None if data is None else parse_baseline(data, types)
        path = at(f"probe@{v}", mdir / f"probe_{v}.json")
        data = reader.json(path, f"probe@{v} metrics")
        probe[v] = None if data is None else parse_probe(data, path, types)
    return Run(variants, stages, rejects, synthetic, train, curves, baseline, probe, items, paths)


# --- plots (matplotlib, deterministic SVG) ----------------------------------------------------------------------------


def _svg(fig: Any, name: str) -> str:
    """The figure as an ``<svg>`` element: ids seeded by `name` (unique per plot on the page), no date, text as text."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"steep-report-{name}", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    # matplotlib numbers its group ids per figure (figure_1, axes_1, ...): prefix every id and every reference to
    # one with the plot's name, so that ids stay unique on a page that holds several plots
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", svg)
    return re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', svg)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def plot_funnel(rows: list[tuple[str, int, int]]) -> str:
    """Stacked horizontal bars: kept and dropped records per stage, top to bottom in pipeline order."""
    fig = _figure(7.5, 0.42 * len(rows) + 1.0)
    ax = fig.subplots()
    names = [r[0] for r in rows][::-1]
    kept = [r[1] for r in rows][::-1]
    dropped = [r[2] for r in rows][::-1]
    ax.barh(names, kept, color=COLORS[0], label="kept")
    ax.barh(names, dropped, left=kept, color=COLORS[3], label="dropped")
    for y, (k, d) in enumerate(zip(kept, dropped, strict=True)):
        ax.text(k + d, y, f" {k:,} kept" + (f", {d:,} dropped" if d else ""), va="center", fontsize=8)
    ax.set_xlabel("records")
    ax.set_xlim(0, max((k + d for k, d in zip(kept, dropped, strict=True)), default=1) * 1.35)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Data funnel")
    return _svg(fig, "funnel")


def plot_drops(rows: list[tuple[str, str, int]]) -> str:
    """Horizontal bars: records dropped per (stage, reason), coloured by stage."""
    fig = _figure(7.5, 0.3 * len(rows) + 1.0)
    ax = fig.subplots()
    stages = list(dict.fromkeys(r[0] for r in rows))
    labels = [f"{s}: {r}" for s, r, _ in rows][::-1]
    counts = [n for _, _, n in rows][::-1]
    colors = [COLORS[stages.index(s) % len(COLORS)] for s, _, _ in rows][::-1]
    ax.barh(labels, counts, color=colors)
    for y, n in enumerate(counts):
        ax.text(n, y, f" {n:,}", va="center", fontsize=8)
    ax.set_xlim(0, max(counts, default=1) * 1.15)
    ax.set_xlabel("records dropped")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("Drops per reason")
    return _svg(fig, "drops")


def plot_losses(curves: dict[str, dict[str, list[tuple[int, float]] | None]]) -> str:
    """Training loss (left) and validation loss (right) against the step, one line per variant."""
    fig = _figure(9, 3.4)
    axes = fig.subplots(1, 2)
    for ax, split, title in zip(axes, ("train", "eval"), ("Training loss", "Validation loss"), strict=True):
        for n, (variant, by_split) in enumerate(curves.items()):
            points = by_split.get(split)
            if points:
                steps, values = zip(*points, strict=True)
                marker = "o" if split == "eval" or len(points) <= 20 else None
                ax.plot(steps, values, marker=marker, markersize=3, color=COLORS[n % len(COLORS)], label=variant)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _svg(fig, "losses")


def plot_deltas(rows: list[tuple[str, str, float, float | None, float | None, str]], variants: list[str]) -> str:
    """Each task's change in its main metric (adapted - base, sign set so that right is better) with its interval,
    one marker per variant."""
    tasks = list(dict.fromkeys(r[0] for r in rows))
    fig = _figure(7.5, 0.5 * len(tasks) + 1.4)
    ax = fig.subplots()
    step = 0.6 / max(len(variants), 1)
    for n, variant in enumerate(variants):
        mine = [r for r in rows if r[1] == variant]
        if not mine:
            continue
        ys = [len(tasks) - 1 - tasks.index(r[0]) + 0.3 - step * (n + 0.5) for r in mine]
        xs = [r[2] for r in mine]
        lows = [r[2] - r[3] if r[3] is not None else 0.0 for r in mine]
        highs = [r[4] - r[2] if r[4] is not None else 0.0 for r in mine]
        color = COLORS[n % len(COLORS)]
        ax.errorbar(xs, ys, xerr=[lows, highs], fmt="o", color=color, capsize=3, label=variant)
        for x, y, r in zip(xs, ys, mine, strict=True):
            if r[5] != NO_CHANGE:
                right = max(x, r[4]) if r[4] is not None else x
                ax.annotate(r[5], (right, y), textcoords="offset points", xytext=(5, 0), va="center", fontsize=7)
    ax.axvline(0, color="#888", linewidth=1)
    ax.margins(x=0.08)
    ax.set_yticks(range(len(tasks)), tasks[::-1])
    ax.set_ylim(-0.6, len(tasks) - 0.4)
    ax.set_xlabel("change in the main metric, adapted vs base (right = better)")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Forgetting and gain per task")
    return _svg(fig, "deltas")


# --- sections ---------------------------------------------------------------------------------------------------------


def _drops(metrics: dict[str, Any]) -> dict[str, int]:
    return {k.removeprefix("dropped_"): v for k, v in metrics.items() if k.startswith("dropped_")}


def _not_found(run: Run, key: str) -> str:
    return f"`{run.paths[key]}` not found"


def funnel_rows(run: Run) -> list[tuple[str, int, int]]:
    """(stage, kept, dropped) for every data stage that ran, in pipeline order."""
    rows = []
    names = [*DATA_STAGES, *(f"{s}@{v}" for s in VARIANT_STAGES for v in run.variants)]
    for name in names:
        m = run.stages.get(name)
        if m is not None:
            rows.append((name, int(m.get("kept", 0)), sum(_drops(m).values())))
    return rows


def _stage_note(name: str, m: dict[str, Any]) -> str:
    """What a reader wants next to a stage's counts."""
    if name == "pull":
        sources = {k.removeprefix("records_"): v for k, v in m.items() if k.startswith("records_")}
        return "; ".join(f"{s}: {n:,}" for s, n in sorted(sources.items()))
    if name == "moderate":
        sums = {
            what: sum(v for k, v in m.items() if k.startswith(prefix) and isinstance(v, int))
            for prefix, what in (("normalized_", "normalized"), ("redacted_", "PII redacted"), ("flagged_", "flagged"))
        }
        return "; ".join(f"{what}: {n:,}" for what, n in sums.items() if n)
    if name == "dedup" and isinstance(m.get("reference_texts"), int):
        return f"checked against {m['reference_texts']:,} held-out reference texts"
    if name == "synthesize":
        bits = [f"{m[k]:,} {what}" for k, what in (("prompts", "prompts"), ("pairs_parsed", "pairs parsed")) if k in m]
        if "acceptance_rate" in m:
            bits.append(f"acceptance {_count(m['acceptance_rate'])}")
        return "; ".join(bits)
    if name.startswith("template@"):
        kinds = {k.removeprefix("kept_"): v for k, v in m.items() if k.startswith("kept_") and v}
        return "; ".join(f"{k}: {n:,}" for k, n in sorted(kinds.items()))
    if name.startswith("tokenize@") and "train_examples" in m:
        return f"{m['train_examples']:,} train / {m.get('validation_examples', 0):,} validation examples"
    return ""


def _noted(name: str, key: str) -> bool:
    """Whether `key` of stage `name` is already in the funnel's notes (left out of the other counts)."""
    stage = name.split("@")[0]
    return (
        (stage == "pull" and key.startswith("records_"))
        or (stage == "template" and key.startswith("kept_"))
        or (stage == "tokenize" and key in ("train_examples", "validation_examples"))
        or (stage == "dedup" and key == "reference_texts")
    )


def section_summary(doc: Doc, run: Run) -> None:
    items = []
    pull, mod, ded, syn = (run.stages[s] for s in DATA_STAGES)
    if pull is not None:
        sources = sum(1 for k in pull if k.startswith("records_"))
        items.append(
            f"**Data:** {pull.get('total', 0):,} records pulled" + (f" from {sources} sources" if sources else "")
        )
    curated = [f"{s} dropped {sum(_drops(m).values()):,}" for s, m in (("moderate", mod), ("dedup", ded)) if m]
    if ded is not None:
        items.append(f"**Curated:** {ded.get('kept', 0):,} records kept ({', '.join(curated)})")
    elif mod is not None:
        items.append(f"**Moderated:** {mod.get('kept', 0):,} records kept ({', '.join(curated)}); dedup has not run")
    if syn is not None:
        items.append(
            f"**Synthetic:** {syn.get('kept', 0):,} generated pairs kept of {syn.get('total', 0):,} "
            f"({_pct(syn.get('kept', 0), syn.get('total', 0))})"
        )
    else:
        items.append(f"**Synthetic:** synthesize has not run ({_not_found(run, 'synthesize')})")
    if ded is not None:
        n = ded.get("dropped_reference_overlap", 0)
        items.append(
            f"**Decontamination:** {n:,} training record{'s' if n != 1 else ''} overlapped the held-out reference "
            "sets and " + ("were" if n != 1 else "was") + " dropped"
        )
    for v in run.variants:
        t = run.train[v]
        if t is None:
            items.append(f"**Training `{v}`:** not trained ({_not_found(run, f'train@{v}')})")
        else:
            items.append(
                f"**Training `{v}`:** {_count(t.get('steps'))} steps, validation loss "
                f"{_num(t.get('first_eval_loss'))} at the first evaluation, best {_num(t.get('eval_loss'))} "
                f"(step {_count(t.get('best_step'))})"
            )
    for v in run.variants:
        results = run.probe[v]
        if results is None:
            items.append(f"**Probe `{v}`:** not probed ({_not_found(run, f'probe@{v}')})")
            continue
        forgot = [r.task for r in results if r.forgetting]
        gained = [r.task for r in results if r.gain]
        items.append(
            f"**Probe `{v}`:** forgetting on {len(forgot)} of {len(results)} tasks"
            + (f" ({', '.join(f'`{t}`' for t in forgot)})" if forgot else "")
            + f", gain on {len(gained)}"
            + (f" ({', '.join(f'`{t}`' for t in gained)})" if gained else "")
        )
    doc.h(2, "Summary")
    doc.ul(items)


def section_funnel(doc: Doc, run: Run) -> None:
    doc.h(2, "Data funnel")
    rows = funnel_rows(run)
    if not rows:
        doc.p("No data stage has run: none of its metrics files were found.")
        return
    doc.p(
        "Records into each stage, kept and dropped (`total == kept + dropped` holds for every stage). "
        "The per-variant stages start from the curated records (plus the synthetic pairs)."
    )
    table = []
    for name, kept, dropped in rows:
        m = run.stages[name] or {}
        total = int(m.get("total", kept + dropped))
        table.append([name, f"{total:,}", f"{kept:,}", f"{dropped:,}", _pct(kept, total), _stage_note(name, m)])
    doc.table(["stage", "in", "kept", "dropped", "kept %", "notes"], table)
    missing = [s for s in DATA_STAGES if run.stages[s] is None]
    if missing:
        doc.p("Not run: " + ", ".join(f"{s} ({_not_found(run, s)})" for s in missing) + ".")
    doc.plot(plot_funnel(rows), "Records kept and dropped per stage.")

    doc.h(3, "Drops per reason")
    drops = []
    for name, _, _ in rows:
        m = run.stages[name] or {}
        total = int(m.get("total", 0))
        for reason, n in sorted(_drops(m).items(), key=lambda kv: (-kv[1], kv[0])):
            drops.append((name, reason, int(n), total))
    if drops:
        doc.table(
            ["stage", "reason", "records", "share of stage input"],
            [[s, Code(r), f"{n:,}", _pct(n, t)] for s, r, n, t in drops],
        )
        doc.plot(plot_drops([(s, r, n) for s, r, n, _ in drops]), "Records dropped per stage and reason code.")
    else:
        doc.p("No record was dropped.")

    doc.h(3, "Other counts")
    other = []
    for name, _, _ in rows:
        m = run.stages[name] or {}
        counts = [
            f"{key}: {_count(value)}"
            for key, value in sorted(m.items())
            if key not in ("total", "kept")
            and not key.startswith("dropped_")
            and not isinstance(value, dict | list)
            and not _noted(name, key)
        ]
        if counts:
            other.append([name, "; ".join(counts)])
    if other:
        doc.p("Everything else each stage counts: normalizations, redactions and flags on kept records, and sizes.")
        doc.table(["stage", "counts"], other)


def _where(record: dict[str, Any]) -> str:
    meta = record.get("meta") or {}
    if "source_file" in meta and "row" in meta:
        return f"{meta['source_file']}:{meta['row']}"
    synth = meta.get("synthesize")
    if isinstance(synth, dict) and "generator" in synth:
        return f"{record.get('source', '')} ({synth['generator']})"
    return str(record.get("source", ""))


def _prompt_response(record: dict[str, Any]) -> tuple[str, str]:
    """A record's prompt and response text, whatever its kind."""
    kind = record.get("kind")
    if kind == "conversation":
        msgs = record.get("messages") or []
        user = next((m["content"] for m in msgs if m["role"] == "user"), "")
        bot = next((m["content"] for m in msgs if m["role"] == "assistant"), "")
        return user or "", bot or ""
    if kind == "document":
        return "(document)", record.get("text") or ""
    prompt = record.get("instruction") or ""
    if record.get("input"):
        prompt += "\n" + record["input"]
    return prompt, record.get("output") or ""


def section_rejects(doc: Doc, run: Run, per_reason: int) -> None:
    doc.h(2, "Rejected examples")
    if per_reason == 0:
        doc.p("None shown (`report.max_examples_per_reason` is 0).")
        return
    doc.p(
        f"Up to {per_reason} rejected record{'s' if per_reason != 1 else ''} per reason (in id order, a "
        "stable sample), clipped; `↵` marks a line break. Every rejected record is in the stage's rejects file."
    )
    for stage in REJECT_STAGES:
        rows = run.rejects[stage]
        doc.h(3, stage)
        if rows is None:
            doc.p(f"No rejects file ({_not_found(run, f'rejects@{stage}')}).")
            continue
        if not rows:
            doc.p("No record was rejected.")
            continue
        by_reason: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_reason[row["reason"]].append(row)
        table = []
        for reason, group in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            for row in sorted(group, key=lambda r: r["id"])[:per_reason]:
                prompt, response = _prompt_response(row)
                table.append(
                    [
                        Code(reason),
                        Code(_where(row)),
                        clip(prompt, CLIP_PROMPT),
                        clip(response, CLIP_SHORT),
                        clip(row["detail"] or "", CLIP_SHORT),
                    ]
                )
        doc.table(["reason", "record", "prompt", "response", "detail"], table)


def section_decontamination(doc: Doc, run: Run) -> None:
    doc.h(2, "Decontamination")
    ded = run.stages["dedup"]
    if ded is None:
        doc.p(f"dedup has not run ({_not_found(run, 'dedup')}): no overlap check to report.")
        return
    n = int(ded.get("dropped_reference_overlap", 0))
    texts = ded.get("reference_texts")
    checked = f"{texts:,} held-out reference texts" if isinstance(texts, int) else "the held-out reference files"
    doc.p(
        f"dedup compared every record with {checked} (`dedup.references`, the probe tasks by default) by exact, "
        f"MinHash and semantic match, and dropped **{n:,}** overlapping training record{'s' if n != 1 else ''}, "
        "so the probe does not score answers the model was trained on."
        if n
        else f"dedup compared every record with {checked} (`dedup.references`) and found **no overlap**."
    )
    per_ref = {k: v for k, v in sorted(ded.items()) if k.startswith("reference_") and k != "reference_texts"}
    if per_ref:
        doc.table(["count", "value"], [[Code(k), _count(v)] for k, v in per_ref.items()])
    rows = [r for r in run.rejects["dedup"] or [] if r["reason"] == "reference_overlap"]
    found = Counter()
    for r in rows:
        m = _OVERLAP.search(r["detail"] or "")
        found[(m["file"], m["method"]) if m else ("(unparsed detail)", "")] += 1
    if found:
        doc.table(
            ["reference file", "method", "records dropped"],
            [[Code(f), m, f"{c:,}"] for (f, m), c in sorted(found.items())],
        )


def section_synthetic(doc: Doc, run: Run, per_generator: int) -> None:
    doc.h(2, "Synthetic pairs")
    pairs = run.synthetic
    if pairs is None:
        doc.p(f"synthesize has not run ({_not_found(run, 'synthetic')}).")
        return
    if not pairs:
        doc.p("synthesize kept no pair.")
        return
    by_gen: dict[str, list[dict]] = defaultdict(list)
    for rec in pairs:
        synth = (rec.get("meta") or {}).get("synthesize")
        by_gen[str(synth.get("generator", "unknown")) if isinstance(synth, dict) else "unknown"].append(rec)
    doc.p(
        f"{len(pairs):,} kept pairs. Up to {per_generator} per generator are shown (in id order, a stable sample), "
        "with their provenance (`meta.synthesize`)."
    )
    doc.table(["generator", "kept pairs"], [[Code(g), f"{len(r):,}"] for g, r in sorted(by_gen.items())])
    if per_generator == 0:
        return
    table = []
    for gen, recs in sorted(by_gen.items()):
        for rec in sorted(recs, key=lambda r: r["id"])[:per_generator]:
            prompt, response = _prompt_response(rec)
            synth = (rec.get("meta") or {}).get("synthesize")
            prov = (
                "; ".join(
                    f"{k}: {clip(json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v, 60)}"
                    for k, v in sorted(synth.items())
                    if k != "generator"
                )
                if isinstance(synth, dict)
                else ""
            )
            table.append([Code(gen), clip(prompt, CLIP_LONG, False), clip(response, CLIP_LONG, False), prov])
    doc.table(["generator", "instruction", "output", "provenance"], table)


def _curve_summary(points: list[tuple[int, float]] | None) -> str:
    if not points:
        return "—"
    best = min(points, key=lambda p: (p[1], p[0]))
    return (
        f"{points[0][1]:.3f} (step {points[0][0]}) → {points[-1][1]:.3f} (step {points[-1][0]}); "
        f"min {best[1]:.3f} (step {best[0]})"
    )


def section_training(doc: Doc, run: Run) -> None:
    doc.h(2, "Training")
    rows = []
    for v in run.variants:
        t = run.train[v]
        if t is None:
            continue
        rows.append(
            [
                Code(v),
                _count(t.get("steps")),
                _count(t.get("best_step")),
                _num(t.get("train_loss")),
                _num(t.get("first_eval_loss")),
                _num(t.get("eval_loss")),
                _count(t.get("stopped_early")),
                _count(t.get("tokens_per_s")),
                _count(t.get("peak_memory_mb")),
            ]
        )
    if rows:
        doc.p(
            "Validation loss at the first evaluation and at the best checkpoint (the adapter kept); the last "
            "logged training loss; throughput and peak memory as measured on this run's machine."
        )
        doc.table(
            [
                "variant",
                "steps",
                "best step",
                "train loss",
                "val loss (first)",
                "val loss (best)",
                "stopped early",
                "tokens/s",
                "peak MB",
            ],
            rows,
        )
    untrained = [v for v in run.variants if run.train[v] is None]
    if untrained:
        doc.p("Not trained: " + ", ".join(f"`{v}` ({_not_found(run, f'train@{v}')})" for v in untrained) + ".")
    curve_rows = [
        [Code(v), split_name, _curve_summary(run.curves[v][split])]
        for v in run.variants
        for split, split_name in (("train", "training"), ("eval", "validation"))
        if run.curves[v][split] is not None
    ]
    if curve_rows:
        doc.h(3, "Loss curves")
        doc.table(["variant", "loss", "first → last; minimum"], curve_rows)
        doc.plot(plot_losses(run.curves), "Training and validation loss per step (dvclive), one line per variant.")


def _higher(metric: str) -> bool:
    """Whether a higher value of `metric` is better (the probe's own table; unknown metrics: higher)."""
    return _probe.HIGHER_IS_BETTER.get(metric, True)


def _arrowed(metric: str) -> str:
    return f"{metric} {'↑' if _higher(metric) else '↓'}"


def _ci(m: dict[str, Any]) -> str:
    if m.get("ci_low") is None or m.get("ci_high") is None:
        return "—"
    return f"[{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"


def _answer(text: str, scores: dict[str, Any], key: str) -> str:
    """A generated answer, clipped, followed by its score `key` on a line of its own."""
    return f"{clip(text, CLIP_LONG, False)}\n({key} {_num(scores.get(key))})"


def section_probe(doc: Doc, run: Run, per_task: int) -> None:
    doc.h(2, "Probe: forgetting and knowledge gain")
    doc.p(
        "Each task scored on the pretrained model (base) and the fine-tuned one (adapted, the adapter on its "
        "base as trained), on the same items. Main metric per type: multiple choice `acc`, perplexity "
        "`bits_per_byte` (lower is better), generation `rougeL`, knowledge `contains`. The interval is a paired "
        "bootstrap over items (level `probe.confidence`); McNemar's exact test on multiple-choice accuracy. "
        "**forgetting**: the main metric got worse by more than `probe.forgetting_threshold` and the interval "
        "excludes zero; **gain**: the same, better."
    )
    table, plot_rows = [], []
    for v in run.variants:
        for r in run.probe[v] or []:
            name = r.main
            if name is None or name not in r.metrics:
                table.append([Code(v), Code(r.task), r.type, "—", "—", "—", "—", "—", _p_value(r.mcnemar_p), r.verdict])
                continue
            m = r.metrics[name]
            higher = _higher(name)
            table.append(
                [
                    Code(v),
                    Code(r.task),
                    r.type,
                    _arrowed(name),
                    _num(m["base"]),
                    _num(m["adapted"]),
                    _num(m["delta"], sign=True),
                    _ci(m),
                    _p_value(r.mcnemar_p),
                    r.verdict,
                ]
            )
            sign = 1.0 if higher else -1.0
            lo, hi = m.get("ci_low"), m.get("ci_high")
            if lo is not None and hi is not None:
                lo, hi = sorted((sign * lo, sign * hi))
            plot_rows.append((f"{r.task} ({_arrowed(name)})", v, sign * m["delta"], lo, hi, r.verdict))
    if table:
        doc.table(
            ["variant", "task", "type", "main metric", "base", "adapted", "delta", "interval", "McNemar p", "verdict"],
            table,
        )
    if plot_rows:
        doc.plot(
            plot_deltas(plot_rows, run.variants),
            "Change in each task's main metric with its bootstrap interval; lower-is-better metrics are flipped so "
            "that right is always better.",
        )
    for v in run.variants:
        if run.probe[v] is not None:
            continue
        if run.baseline[v] is not None:
            doc.p(
                f"`{v}`: the adapted model has not been probed ({_not_found(run, f'probe@{v}')}); "
                "the base model's scores:"
            )
            doc.table(
                ["task", "type", "metric", "base"],
                [
                    [Code(r.task), r.type, Code(k), _num(m["base"])]
                    for r in run.baseline[v] or []
                    for k, m in sorted(r.metrics.items())
                ],
            )
        else:
            doc.p(f"`{v}`: not probed ({_not_found(run, f'probe@{v}')}).")

    every = [
        [Code(v), Code(r.task), _arrowed(k), _num(m["base"]), _num(m["adapted"]), _num(m["delta"], sign=True), _ci(m)]
        for v in run.variants
        for r in run.probe[v] or []
        for k, m in sorted(r.metrics.items(), key=lambda kv: (kv[0] != r.main, kv[0]))
    ]
    if every:
        doc.h(3, "Every probe metric")
        doc.p("The main metric first; ↑ higher is better, ↓ lower is better.")
        doc.table(["variant", "task", "metric", "base", "adapted", "delta", "interval"], every)

    if all(run.items[v] is None for v in run.variants):
        missing = ", ".join(f"`{run.paths[f'items@{v}']}`" for v in run.variants)
        doc.p(f"No per-item probe results ({missing} not found): no knowledge-gain examples or side-by-side answers.")
        return
    section_knowledge(doc, run, per_task)
    section_side_by_side(doc, run, per_task)


def _by_task(doc: Doc, run: Run, variant: str, task_type: str) -> dict[str, list[dict]] | None:
    """The variant's per-item rows of one task type, by task name (sorted); None, said in the report, if not found."""
    rows = run.items[variant]
    if rows is None:
        doc.p(f"`{variant}`: no per-item results ({_not_found(run, f'items@{variant}')}).")
        return None
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["type"] == task_type:
            by_task[row["task"]].append(row)
    return dict(sorted(by_task.items()))


def _right(scores: dict[str, Any]) -> bool:
    return float(scores.get("contains", 0) or 0) >= 0.5


def section_knowledge(doc: Doc, run: Run, per_task: int) -> None:
    doc.h(3, "Knowledge gain examples")
    if per_task == 0:
        doc.p("None shown (`report.max_examples_per_task` is 0).")
        return
    doc.p(
        f"Questions about the infused documents: up to {per_task} per task and variant, first those the base model "
        "missed and the adapted model answers (`contains`: the normalized reference is in the answer), then the "
        "others. Each answer is followed by its `contains` score."
    )
    shown = False
    order = {"gained": 0, "both right": 1, "lost": 2, "both wrong": 3}
    for v in run.variants:
        by_task = _by_task(doc, run, v, "knowledge")
        if by_task is None:
            continue
        for task, group in by_task.items():
            change = {}
            for row in group:
                before, after = _right(row["base_scores"]), _right(row["scores"])
                change[row["item"]] = (
                    "gained"
                    if after and not before
                    else "lost"
                    if before and not after
                    else "both right"
                    if after
                    else "both wrong"
                )
            counts = Counter(change.values())
            doc.p(
                f"`{task}` on `{v}`: {len(group)} questions; base right on "
                f"{counts['both right'] + counts['lost']}, adapted right on {counts['both right'] + counts['gained']}; "
                f"**{counts['gained']} gained**, {counts['lost']} lost."
            )
            picked = sorted(group, key=lambda r: (order[change[r["item"]]], r["item"]))[:per_task]
            doc.table(
                ["item", "question", "reference", "base answer", "adapted answer", "change"],
                [
                    [
                        str(r["item"]),
                        clip(question_of(r["prompt"]), CLIP_LONG, False),
                        clip(r["reference"], CLIP_LONG, False),
                        _answer(r["base_prediction"], r["base_scores"], "contains"),
                        _answer(r["prediction"], r["scores"], "contains"),
                        change[r["item"]],
                    ]
                    for r in picked
                ],
            )
            shown = True
    if not shown and any(run.items[v] is not None for v in run.variants):
        doc.p("No knowledge task in the probe results.")


def section_side_by_side(doc: Doc, run: Run, per_task: int) -> None:
    doc.h(3, "Side by side: showcase prompts")
    doc.p(
        "The same prompts (`probe.showcase_prompts`, through each variant's template), answered greedily by the "
        "base and the adapted model."
    )
    for v in run.variants:
        rows = run.items[v]
        if rows is None:
            doc.p(f"`{v}`: no per-item results ({_not_found(run, f'items@{v}')}).")
            continue
        show = sorted((r for r in rows if r["task"] == _probe.SHOWCASE), key=lambda r: r["item"])
        if not show:
            doc.p(f"`{v}`: no showcase prompts in the probe results.")
            continue
        doc.p(f"Variant `{v}`:")
        doc.table(
            ["prompt", "base model", "adapted model"],
            [
                [
                    clip(question_of(r["prompt"]), CLIP_LONG, False),
                    clip(r["base_prediction"], CLIP_LONG, False),
                    clip(r["prediction"], CLIP_LONG, False),
                ]
                for r in show
            ],
        )
    doc.h(3, "Side by side: generation tasks")
    if per_task == 0:
        doc.p("None shown (`report.max_examples_per_task` is 0).")
        return
    doc.p(
        f"The first {per_task} items of each generation task (the same items for every variant), with each answer's "
        "`rougeL` against the reference."
    )
    for v in run.variants:
        by_task = _by_task(doc, run, v, "generation")
        if by_task is None:
            continue
        if not by_task:
            doc.p(f"`{v}`: no generation task in the probe results.")
        for task, group in by_task.items():
            doc.p(f"`{task}` on `{v}`:")
            doc.table(
                ["item", "prompt", "reference", "base answer", "adapted answer"],
                [
                    [
                        str(r["item"]),
                        clip(question_of(r["prompt"]), CLIP_LONG, False),
                        clip(r["reference"], CLIP_LONG, False),
                        _answer(r["base_prediction"], r["base_scores"], "rougeL"),
                        _answer(r["prediction"], r["scores"], "rougeL"),
                    ]
                    for r in sorted(group, key=lambda r: r["item"])[:per_task]
                ],
            )


def section_inputs(doc: Doc, reader: Inputs) -> None:
    doc.h(2, "Inputs")
    doc.p("Every file this report reads; a missing one is a stage that has not run (or a variant not probed).")
    doc.table(["file", "content", "status"], [[Code(p), w, "read" if f else "not found"] for p, w, f in reader.seen])


def build(run: Run, reader: Inputs, cfg: Report, html_name: str) -> Doc:
    """The whole report as blocks."""
    doc = Doc()
    doc.h(1, "steep report")
    doc.p(
        f"Variants: {', '.join(f'`{v}`' for v in run.variants)}. Written by `dvc repro report` from the files under "
        f"[Inputs](#inputs); `{html_name}` holds the same report with its plots."
    )
    section_summary(doc, run)
    section_funnel(doc, run)
    section_rejects(doc, run, cfg.max_examples_per_reason)
    section_decontamination(doc, run)
    section_synthetic(doc, run, cfg.max_examples_per_task)
    section_training(doc, run)
    section_probe(doc, run, cfg.max_examples_per_task)
    section_inputs(doc, reader)
    return doc


# --- the stage --------------------------------------------------------------------------------------------------------


def run(params: Any, *, variants: list[str], inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    """Read the run's metrics, rejects, curves and probe results; write the Markdown and HTML report.

    Args:
        params: scoped params holding ``report``.
        variants: the variants to report on, in order.
        inputs: ``metrics_dir``, ``rejects_dir``, ``synthetic``, ``live_dir``, ``probe_dir`` (see the module doc).
        outputs: ``md`` and ``html``, the report files.

    Returns:
        What was read: ``inputs_read``, ``inputs_missing`` and ``variants``.

    Raises:
        StageError: a variant named twice, no input found at all, or an input that is there but malformed.
    """
    cfg: Report = params.report
    dupes = sorted({v for v in variants if variants.count(v) > 1})
    if dupes:
        raise StageError(f"--variants names {dupes} more than once; give each variant once, e.g. --variants base chat")
    reader = Inputs()
    run_data = read_run(list(variants), inputs, reader)
    if not any(found for _, _, found in reader.seen):
        raise StageError(
            f"none of the report's inputs were found (looked for {len(reader.seen)} files, e.g. "
            f"{reader.seen[0][0]}); run the pipeline first, or check the --*-dir paths"
        )
    for path in reader.missing:
        log.info("not found (said so in the report): %s", path)
    doc = build(run_data, reader, cfg, outputs["html"].name)
    markdown, page = to_markdown(doc), to_html(doc, "steep report")
    with _io.atomic_outputs(outputs["md"], outputs["html"]) as (md_tmp, html_tmp):
        md_tmp.write_text(markdown, encoding="utf-8")
        html_tmp.write_text(page, encoding="utf-8")
    read = sum(1 for _, _, found in reader.seen if found)
    log.info("wrote %s and %s from %d inputs (%d not found)", outputs["md"], outputs["html"], read, len(reader.missing))
    return {"inputs_read": read, "inputs_missing": len(reader.missing), "variants": len(variants)}


def main() -> None:
    """Command line: the flags of the report stage's cmd in dvc.yaml."""
    ap = argparse.ArgumentParser(prog="python -m stages.report.report", description=__doc__.split("\n")[0])
    ap.add_argument("--params", required=True, type=Path, help="params.yaml")
    ap.add_argument("--variants", required=True, nargs="+", help="the variants to report on, in order")
    ap.add_argument("--metrics-dir", required=True, type=Path, help="the stages' metrics JSON files")
    ap.add_argument("--rejects-dir", required=True, type=Path, help="rejected records, <stage>.parquet")
    ap.add_argument("--synthetic", required=True, type=Path, help="the synthesize stage's kept pairs (Parquet)")
    ap.add_argument("--live-dir", required=True, type=Path, help="dvclive directories train_<variant>")
    ap.add_argument("--probe-dir", required=True, type=Path, help="per-item probe results, <variant>.parquet")
    ap.add_argument("--md", required=True, type=Path, help="the Markdown report to write")
    ap.add_argument("--html", required=True, type=Path, help="the HTML report to write")
    args = ap.parse_args()
    params = _params.load(args.params, PARAMS)
    cli.log_params("report", params.report)
    run(
        params,
        variants=args.variants,
        inputs={
            "metrics_dir": args.metrics_dir,
            "rejects_dir": args.rejects_dir,
            "synthetic": args.synthetic,
            "live_dir": args.live_dir,
            "probe_dir": args.probe_dir,
        },
        outputs={"md": args.md, "html": args.html},
    )


if __name__ == "__main__":
    cli.run_main(main)
