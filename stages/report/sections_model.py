"""The report's sections on the models: training (per variant, and the loss curves) and the probe (the forgetting
table, every metric, knowledge-gain examples, and showcase prompts and generation items side by side).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from stages.probe.types import HIGHER_IS_BETTER, SHOWCASE
from stages.report.document import Code, Doc
from stages.report.inputs import NO_CHANGE, Run, TaskResult, not_found
from stages.report.plots import plot_deltas, plot_losses
from stages.report.sections_chat import section_chat
from stages.report.text import CLIP_LONG, clip, fmt_count, fmt_num, fmt_p, question_of


def _curve_summary(points: list[tuple[int, float]] | None) -> str:
    if not points:
        return "—"
    best = min(points, key=lambda p: (p[1], p[0]))
    return (
        f"{points[0][1]:.3f} (step {points[0][0]}) → {points[-1][1]:.3f} (step {points[-1][0]}); "
        f"min {best[1]:.3f} (step {best[0]})"
    )


def section_training(doc: Doc, run: Run) -> None:
    """Add the training table per variant and the loss curves (summary table and plot)."""
    doc.h(2, "Training")
    rows = []
    for v in run.variants:
        t = run.train[v]
        if t is None:
            continue
        rows.append(
            [
                Code(v),
                fmt_count(t.get("steps")),
                fmt_count(t.get("best_step")),
                fmt_num(t.get("train_loss")),
                fmt_num(t.get("first_eval_loss")),
                fmt_num(t.get("eval_loss")),
                fmt_count(t.get("stopped_early")),
                fmt_count(t.get("tokens_per_s")),
                fmt_count(t.get("peak_memory_mb")),
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
        doc.p("Not trained: " + ", ".join(f"`{v}` ({not_found(run, f'train@{v}')})" for v in untrained) + ".")
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
    return HIGHER_IS_BETTER.get(metric, True)


def _arrowed(metric: str) -> str:
    return f"{metric} {'↑' if _higher(metric) else '↓'}"


def _ci(m: dict[str, Any]) -> str:
    if m.get("ci_low") is None or m.get("ci_high") is None:
        return "—"
    return f"[{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"


def _verdict(r: TaskResult) -> str:
    """The task's verdict; beside no clear change, the smallest change its test could detect (when known)."""
    if r.verdict != NO_CHANGE or r.mde is None:
        return r.verdict
    return f"{r.verdict}; cannot detect changes below {r.mde:.3f}"


def _answer(text: str, scores: dict[str, Any], key: str) -> str:
    """A generated answer, clipped, followed by its score `key` on a line of its own."""
    return f"{clip(text, CLIP_LONG, False)}\n({key} {fmt_num(scores.get(key))})"


def section_probe(doc: Doc, run: Run, per_task: int) -> None:
    """Add the forgetting table and plot, every probe metric, then the per-item sections (`per_task` examples)."""
    doc.h(2, "Probe: forgetting and knowledge gain")
    doc.p(
        "Each task scored on the pretrained model (base) and the fine-tuned one (adapted, the adapter on its "
        "base as trained), on the same items. Main metric per type: multiple choice `acc`, perplexity "
        "`bits_per_byte` (lower is better), generation `rougeL`, knowledge `contains`, chat behaviour `chat_ok` "
        "(answers that end their turn, write no next turn and recite no document). The main metric's paired test: "
        "`mcnemar`, McNemar's exact test on the items won and lost; `sign_flip`, a paired sign-flip permutation "
        "test of the per-item changes; `sign_flip_nll`, the same on each item's log-likelihood (the sum of which "
        "is the change in bits per byte). **p adj.** is p after Holm's correction over the variant's tasks. "
        "**forgetting**: p adj. below `probe.alpha` and the main metric worse by more than "
        "`probe.forgetting_threshold`; **gain**: the same, better. The interval (a paired bootstrap over items, "
        "level `probe.confidence`) is the range of the change; it decides nothing. Beside no clear change, the "
        "smallest change the task's items could detect (80% power at `probe.alpha` / the number of tasks)."
    )
    table, plot_rows = [], []
    for v in run.variants:
        for r in run.probe[v] or []:
            name = r.main
            tested = [r.test or "—", fmt_p(r.p), fmt_p(r.p_adjusted), _verdict(r)]
            if name not in r.metrics:
                table.append([Code(v), Code(r.task), r.type, "—", "—", "—", "—", "—", *tested])
                continue
            m = r.metrics[name]
            higher = _higher(name)
            table.append(
                [
                    Code(v),
                    Code(r.task),
                    r.type,
                    _arrowed(name),
                    fmt_num(m["base"]),
                    fmt_num(m["adapted"]),
                    fmt_num(m["delta"], sign=True),
                    _ci(m),
                    *tested,
                ]
            )
            sign = 1.0 if higher else -1.0
            lo, hi = m.get("ci_low"), m.get("ci_high")
            if lo is not None and hi is not None:
                lo, hi = sorted((sign * lo, sign * hi))
            plot_rows.append((f"{r.task} ({_arrowed(name)})", v, sign * m["delta"], lo, hi, r.verdict))
    if table:
        head = ["variant", "task", "type", "main metric", "base", "adapted", "delta", "interval", "test", "p"]
        doc.table([*head, "p adj.", "verdict"], table)
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
                f"`{v}`: the adapted model has not been probed ({not_found(run, f'probe@{v}')}); "
                "the base model's scores:"
            )
            doc.table(
                ["task", "type", "metric", "base"],
                [
                    [Code(r.task), r.type, Code(k), fmt_num(m["base"])]
                    for r in run.baseline[v] or []
                    for k, m in sorted(r.metrics.items())
                ],
            )
        else:
            doc.p(f"`{v}`: not probed ({not_found(run, f'probe@{v}')}).")

    every = [
        [
            Code(v),
            Code(r.task),
            _arrowed(k),
            fmt_num(m["base"]),
            fmt_num(m["adapted"]),
            fmt_num(m["delta"], sign=True),
            _ci(m),
        ]
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
    section_chat(doc, run, per_task)
    section_side_by_side(doc, run, per_task)


def _by_task(doc: Doc, run: Run, variant: str, task_type: str) -> dict[str, list[dict]] | None:
    """The variant's per-item rows of one task type, by task name (sorted); None, said in the report, if not found."""
    rows = run.items[variant]
    if rows is None:
        doc.p(f"`{variant}`: no per-item results ({not_found(run, f'items@{variant}')}).")
        return None
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["type"] == task_type:
            by_task[row["task"]].append(row)
    return dict(sorted(by_task.items()))


def _right(scores: dict[str, Any]) -> bool:
    return float(scores.get("contains", 0) or 0) >= 0.5


def section_knowledge(doc: Doc, run: Run, per_task: int) -> None:
    """Add up to `per_task` knowledge questions per task and variant, those the adapted model gained first."""
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
    """Add the showcase prompts and the first `per_task` items of each generation task, base beside adapted."""
    doc.h(3, "Side by side: showcase prompts")
    doc.p(
        "The same prompts (`probe.showcase_prompts`, through each variant's template), answered greedily by the "
        "base and the adapted model."
    )
    for v in run.variants:
        rows = run.items[v]
        if rows is None:
            doc.p(f"`{v}`: no per-item results ({not_found(run, f'items@{v}')}).")
            continue
        show = sorted((r for r in rows if r["task"] == SHOWCASE), key=lambda r: r["item"])
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
