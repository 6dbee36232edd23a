"""The report page: its title, the summary, the sections in reading order, and the list of inputs read.

:func:`build` is the whole report as a :class:`Doc`; the stage renders it to Markdown and HTML.
"""

from __future__ import annotations

from stages.core.params.report import Report
from stages.report.document import Code, Doc
from stages.report.inputs import DATA_STAGES, Inputs, Run, drops_of, not_found
from stages.report.precision import Review, section_precision
from stages.report.sections_data import (
    section_decontamination,
    section_flags,
    section_funnel,
    section_rejects,
    section_synthetic,
)
from stages.report.sections_model import section_probe, section_training
from stages.report.text import fmt_count, fmt_num, fmt_pct


def section_summary(doc: Doc, run: Run) -> None:
    """Add the summary: one line each on the data, curation, synthetic pairs, decontamination, training, probe."""
    items = []
    pull, mod, ded, syn = (run.stages[s] for s in DATA_STAGES)
    if pull is not None:
        sources = sum(1 for k in pull if k.startswith("records_"))
        items.append(
            f"**Data:** {pull.get('total', 0):,} records pulled" + (f" from {sources} sources" if sources else "")
        )
    curated = [f"{s} dropped {sum(drops_of(m).values()):,}" for s, m in (("moderate", mod), ("dedup", ded)) if m]
    if ded is not None:
        items.append(f"**Curated:** {ded.get('kept', 0):,} records kept ({', '.join(curated)})")
    elif mod is not None:
        items.append(f"**Moderated:** {mod.get('kept', 0):,} records kept ({', '.join(curated)}); dedup has not run")
    if syn is not None:
        items.append(
            f"**Synthetic:** {syn.get('kept', 0):,} generated pairs kept of {syn.get('total', 0):,} "
            f"({fmt_pct(syn.get('kept', 0), syn.get('total', 0))})"
        )
    else:
        items.append(f"**Synthetic:** synthesize has not run ({not_found(run, 'synthesize')})")
    if ded is not None:
        n = ded.get("dropped_reference_overlap", 0)
        items.append(
            f"**Decontamination:** {n:,} training record{'s' if n != 1 else ''} overlapped the held-out reference "
            "sets and " + ("were" if n != 1 else "was") + " dropped"
        )
    for v in run.variants:
        t = run.train[v]
        if t is None:
            items.append(f"**Training `{v}`:** not trained ({not_found(run, f'train@{v}')})")
        else:
            items.append(
                f"**Training `{v}`:** {fmt_count(t.get('steps'))} steps, validation loss "
                f"{fmt_num(t.get('first_eval_loss'))} at the first evaluation, best {fmt_num(t.get('eval_loss'))} "
                f"(step {fmt_count(t.get('best_step'))})"
            )
    for v in run.variants:
        results = run.probe[v]
        if results is None:
            items.append(f"**Probe `{v}`:** not probed ({not_found(run, f'probe@{v}')})")
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


def section_inputs(doc: Doc, reader: Inputs) -> None:
    """Add the list of every file the report read or looked for, and whether it was there."""
    doc.h(2, "Inputs")
    doc.p("Every file this report reads; a missing one is a stage that has not run (or a variant not probed).")
    doc.table(["file", "content", "status"], [[Code(p), w, "read" if f else "not found"] for p, w, f in reader.seen])


def build(run: Run, reader: Inputs, cfg: Report, html_name: str, review: Review | None = None) -> Doc:
    """The whole report as blocks (`review`: the rules' measured precision, from the reviews)."""
    doc = Doc()
    doc.h(1, "steep report")
    doc.p(
        f"Variants: {', '.join(f'`{v}`' for v in run.variants)}. Written by `dvc repro report` from the files under "
        f"[Inputs](#inputs); `{html_name}` holds the same report with its plots."
    )
    section_summary(doc, run)
    section_funnel(doc, run, review)
    section_rejects(doc, run, cfg.max_examples_per_reason)
    section_flags(doc, run, cfg.max_examples_per_reason, review)
    if review is not None:
        section_precision(doc, review)
    section_decontamination(doc, run)
    section_synthetic(doc, run, cfg.max_examples_per_task)
    section_training(doc, run)
    section_probe(doc, run, cfg.max_examples_per_task)
    section_inputs(doc, reader)
    return doc
