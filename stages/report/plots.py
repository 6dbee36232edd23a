"""The report's plots as deterministic inline SVG (matplotlib): data funnel, drops per reason, loss curves, and
forgetting deltas with their intervals.

Same data, same bytes: matplotlib's SVG ids are seeded per plot (``svg.hashsalt``), its date is left out, text stays
text, and every id is prefixed with the plot's name so that ids stay unique on a page holding several plots.
"""

from __future__ import annotations

import io
import re
from typing import Any

from stages.report.inputs import NO_CHANGE

COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


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
