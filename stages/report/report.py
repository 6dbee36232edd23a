"""Report: one readable page on the whole run: data funnel, rejects, synthetic pairs, training, forgetting and gain.

Inputs (every path comes from the command line; every input is optional, and one that is not there is named in the
report instead of stopping it; a file that is there but malformed stops the stage, naming the file):

* ``--metrics-dir`` (``metrics``): the data stages' ``pull.json``, ``moderate.json``, ``dedup.json``,
  ``synthesize.json`` (``total``, ``kept``, ``dropped_<reason>`` and extra counts), and per variant
  ``template_<v>.json``, ``tokenize_<v>.json``, ``train_<v>.json``, ``baseline_<v>.json`` and ``probe_<v>.json``
  (per task: its ``type``, one of ``multiple_choice``, ``perplexity``, ``generation``, ``knowledge``, and the
  probe's base/adapted/delta/CI per metric, McNemar p, forgetting and gain flags).
* ``--rejects-dir`` (``data/rejected``): ``moderate.parquet``, ``dedup.parquet``, ``synthesize.parquet``, rejected
  records (``stages.core.records.REJECT_SCHEMA``: the record plus ``stage``, ``reason``, ``detail``).
* ``--synthetic`` (``data/synthetic.parquet``): the synthesize stage's kept pairs (records; ``meta.synthesize`` holds
  their provenance: the generator, ``documents`` or ``self_instruct``, and the chunk or seeds).
* ``--live-dir`` (``dvclive``): ``train_<v>/plots/metrics/train/loss.tsv`` and ``.../eval/loss.tsv`` (``step``,
  ``loss``), the training and validation loss curves.
* ``--probe-dir`` (``data/probe``): ``<v>.parquet``, probe@<v>'s per-item table (task, type, item, prompt, reference,
  prediction, scores, base_prediction, base_scores; scores as JSON).

Params: ``report``, and ``variants``: the variants reported on are its keys, in file order.

Outputs: ``--md`` (``metrics/report.md``), Markdown tables; ``--html`` (``metrics/report.html``), one self-contained
page with the same content and the plots as inline SVG (data funnel, drops per reason, training and validation loss,
forgetting deltas with their intervals); ``--headline`` (``metrics/headline.json``), the run's headline numbers in
one flat metrics file (records kept, drops per stage, best validation loss, per variant and task the main metric's
delta and verdict: ``stages.report.headline``; ``python -m stages.report.headline metrics/headline.json`` prints
them). Same inputs, same bytes: stable order everywhere, no timestamps, no absolute paths, matplotlib's SVG ids seeded
(``svg.hashsalt``) and its date left out.

Run: ``dvc repro report`` (= ``python -m stages.report.report --params params.yaml
    --metrics-dir metrics --rejects-dir data/rejected --synthetic data/synthetic.parquet --live-dir dvclive
    --probe-dir data/probe --md metrics/report.md --html metrics/report.html --headline metrics/headline.json``).

Sections: summary; data funnel (records in, kept and dropped per stage; drops per reason; the other counts each
stage reports); rejected examples (``report.max_examples_per_reason`` per reason, clipped); decontamination (the
records dedup dropped for overlapping the held-out reference files, per file and method); synthetic pairs (per
generator, ``report.max_examples_per_task`` kept pairs with their provenance); training (per variant, and the loss
curves); probe (the forgetting table: each task's main metric, base, adapted, delta, interval, McNemar p, verdict;
every metric; knowledge-gain examples, questions the base model missed and the adapted one answers first;
showcase prompts and generation items side by side). Last, the list of inputs read and not found.

Modules: ``document`` (blocks, Markdown and HTML), ``inputs`` (reading), ``text`` (cell formatting), ``plots``
(SVG), ``sections_data``, ``sections_model`` and ``sections`` (the page, in reading order), ``headline`` (the
headline numbers and their summary).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.report import Report
from stages.report.document import to_html, to_markdown
from stages.report.headline import headline
from stages.report.inputs import Inputs, read_run, variant_paths
from stages.report.precision import csv_text, read_review, review_metrics
from stages.report.sections import build
from stages.report.sections_data import drop_rows, funnel_rows

log = logging.getLogger("steep.report")


def _local_paths(params: _params.Scoped, variant: str | None, inputs: Mapping[str, Path]) -> list[tuple[str, str]]:
    """Every per-variant file the report reads: each must be a dependency in dvc.yaml (which cannot expand
    ``${variants}`` in a list, so a variant added to params needs its files added there)."""
    return [(str(p), f"variants {v!r}") for v in params.variants for p in variant_paths(v, inputs).values()]


STAGE = cli.Stage(
    params=("report", "variants"),
    inputs={
        "metrics_dir": "the stages' metrics JSON files",
        "rejects_dir": "rejected records, <stage>.parquet",
        "moderated": "moderate's kept records (Parquet): the flagged ones are shown per flag",
        "curated": "dedup's kept records (Parquet): its flags, for the rules' precision",
        "reviews": "the review verdicts, <name>.csv (`steep review score`)",
        "synthetic": "the synthesize stage's kept pairs (Parquet)",
        "live_dir": "dvclive directories train_<variant>",
        "probe_dir": "per-item probe results, <variant>.parquet",
    },
    outputs={
        "md": "the Markdown report to write",
        "html": "the HTML report to write",
        "headline": "the headline metrics JSON to write (flat, a screen wide)",
        "review": "the rules' measured precision JSON to write (per reason)",
        "funnel": "the funnel CSV to write (stage, kept, dropped; a DVC plot)",
        "drops": "the drops-per-reason CSV to write (reason, stage, records; a DVC plot)",
    },
    metrics=False,
    local_paths=_local_paths,
)
PARAMS = list(STAGE.params)


def run(params: Any, *, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    """Read the run's metrics, rejects, curves and probe results; write the Markdown and HTML report.

    Args:
        params: scoped params holding ``report`` and ``variants`` (the variants reported on: its keys, in order).
        inputs: ``metrics_dir``, ``rejects_dir``, ``moderated``, ``synthetic``, ``live_dir``, ``probe_dir``
            (see the module doc).
        outputs: ``md`` and ``html``, the report files; ``headline``, the headline metrics (``headline`` module).

    Returns:
        What was read: ``inputs_read``, ``inputs_missing`` and ``variants``.

    Raises:
        StageError: no input found at all, or an input that is there but malformed.
    """
    cfg: Report = params.report
    variants = list(params.variants)
    reader = Inputs()
    run_data = read_run(variants, inputs, reader)
    if not any(found for _, _, found in reader.seen):
        raise StageError(
            f"none of the report's inputs were found (looked for {len(reader.seen)} files, e.g. "
            f"{reader.seen[0][0]}); run the pipeline first, or check the --*-dir paths"
        )
    for path in reader.missing:
        log.info("not found (said so in the report): %s", path)
    review = read_review(run_data, inputs, reader, cfg)
    doc = build(run_data, reader, cfg, outputs["html"].name, review)
    markdown, page = to_markdown(doc), to_html(doc, "steep report")
    numbers = headline(run_data)
    funnel = csv_text(["stage", "kept", "dropped"], [list(r) for r in funnel_rows(run_data)])
    drops = csv_text(["reason", "stage", "records"], [[f"{s}: {r}", s, n] for s, r, n, _ in drop_rows(run_data)])
    names = ("md", "html", "headline", "review", "funnel", "drops")
    with _io.atomic_outputs(*(outputs[k] for k in names)) as (md_tmp, html_tmp, head_tmp, rev_tmp, fun_tmp, drop_tmp):
        md_tmp.write_text(markdown, encoding="utf-8")
        html_tmp.write_text(page, encoding="utf-8")
        _io.write_json(head_tmp, numbers)
        _io.write_json(rev_tmp, review_metrics(review))
        fun_tmp.write_text(funnel, encoding="utf-8")
        drop_tmp.write_text(drops, encoding="utf-8")
    read = sum(1 for _, _, found in reader.seen if found)
    log.info("wrote %s and %s from %d inputs (%d not found)", outputs["md"], outputs["html"], read, len(reader.missing))
    return {"inputs_read": read, "inputs_missing": len(reader.missing), "variants": len(variants)}


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the report stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
