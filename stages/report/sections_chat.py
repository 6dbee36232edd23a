"""The report's chat-behaviour section: per variant and chat_behaviour task, how many answers pass each check on the
base and the adapted model, and the answers the adapted model got wrong, base beside adapted.
"""

from __future__ import annotations

from stages.probe.types import TYPES
from stages.report.document import Code, Doc
from stages.report.inputs import Run
from stages.report.text import CLIP_LONG, clip, question_of

CHAT = "chat_behaviour"
# the checks of a chat_behaviour answer (the type's item scores, chat_ok: all of them) and what failing one means
FAILED = {"ended": "did not end its turn", "no_turn_spill": "wrote a next turn", "not_verbatim": "recited a document"}
CHECKS = TYPES[CHAT].item_scores


def _failed(scores: dict) -> str:
    return ", ".join(why for check, why in FAILED.items() if float(scores.get(check, 0)) < 0.5) or "—"


def section_chat(doc: Doc, run: Run, per_task: int) -> None:
    """Add the chat-behaviour checks per variant and task, and up to `per_task` answers, adapted failures first."""
    groups = {
        (v, task): sorted((r for r in run.items[v] or [] if r["task"] == task), key=lambda r: r["item"])
        for v in run.variants
        for task in sorted({r["task"] for r in run.items[v] or [] if r["type"] == CHAT})
    }
    if not groups:
        return
    doc.h(3, "Chat behaviour")
    doc.p(
        "Ordinary user prompts through each variant's template, answered greedily within `probe.max_new_tokens`. "
        "An answer passes `ended` when the model ended its turn itself (its end-of-turn or EOS token, before the "
        "budget ran out), `no_turn_spill` when it holds no template marker or role line (a next user turn written "
        "by the model), `not_verbatim` when no run of the task's `min_verbatim_words` words occurs in its "
        "documents; `chat_ok`: all three. Counts of passing answers, base → adapted; *lost*: passed on base, "
        "failed adapted."
    )
    table = []
    for (v, task), rows in groups.items():
        for check in CHECKS:
            base = sum(float(r["base_scores"][check]) >= 0.5 for r in rows)
            adapted = sum(float(r["scores"][check]) >= 0.5 for r in rows)
            lost = sum(float(r["base_scores"][check]) >= 0.5 > float(r["scores"][check]) for r in rows)
            table.append([Code(v), Code(task), Code(check), f"{base}/{len(rows)}", f"{adapted}/{len(rows)}", str(lost)])
    doc.table(["variant", "task", "check", "base", "adapted", "lost"], table)
    if per_task == 0:
        return
    for (v, task), rows in groups.items():
        # the adapted model's failures first, those the base model passed before the others
        order = sorted(rows, key=lambda r: (r["scores"]["chat_ok"] >= 0.5, r["base_scores"]["chat_ok"] < 0.5))
        doc.p(f"`{task}` on `{v}`: up to {per_task} answers, the adapted model's failures first.")
        doc.table(
            ["item", "prompt", "base answer", "adapted answer", "adapted failed"],
            [
                [
                    str(r["item"]),
                    clip(question_of(r["prompt"]), CLIP_LONG, False),
                    clip(r["base_prediction"], CLIP_LONG, False),
                    clip(r["prediction"], CLIP_LONG, False),
                    _failed(r["scores"]),
                ]
                for r in order[:per_task]
            ],
        )
