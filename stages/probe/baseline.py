"""Baseline: evaluate a variant's pretrained model (no adapter) on every probe task: what the probe compares to.

Inputs: ``--model`` (``models/<variant>/base``, the checkpoint of the models stage) and the task files of
    ``probe.tasks`` (JSONL; formats in ``stages/probe/types.py``). The params ``probe.*`` that change the numbers
    (not the bootstrap or verdict settings), ``template.<variant>`` (generation prompts) and
    ``train.<variant>.quantization`` /
    ``compute_dtype`` (what ``probe.precision: as_trained`` resolves to). It does not read the adapter: retraining
    never re-evaluates the base model.
Outputs: ``--out`` (``data/probe/baseline_<variant>.parquet``): one row per (task, item), sorted by task then item::

    task        the task name (``showcase`` for the showcase generations)
    type        multiple_choice | perplexity | generation | knowledge | showcase
    item        0-based line index in the task file (a harness task: the document's index in its evaluation
                split; showcase: index in probe.showcase_prompts)
    prompt      what the model saw (the harness context; the text; the templated prompt)
    reference   the gold choice / reference / answer ("" for perplexity and showcase)
    prediction  the chosen choice (highest log-likelihood) / the generated text ("" for perplexity)
    scores      JSON object, sorted keys: multiple_choice {acc, acc_norm}; perplexity {nll, tokens, bytes};
                generation {bertscore_f1, bleu, rougeL}; knowledge {contains, exact, rougeL}; showcase {}

``--metrics`` (``metrics/baseline_<variant>.json``): per task its type, scores and n (multiple_choice acc, acc_norm;
    perplexity token_perplexity, bits_per_byte, byte_perplexity; generation rougeL, bleu (0-100), bertscore_f1;
    knowledge exact, contains, rougeL), plus tasks_evaluated and tasks_cached (tasks found in ``--cache``).
Cache: ``--cache`` (``.steep_cache/probe``) keeps each task's per-item results by a hash of everything they depend
    on: adding a task evaluates only that task, and a rerun with nothing changed loads no model.
Run: ``dvc repro baseline@chat`` (= ``python -m stages.probe.baseline --params params.yaml --variant chat
    --model models/chat/base --out data/probe/baseline_chat.parquet --metrics metrics/baseline_chat.json
    --cache .steep_cache/probe``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.probe import engine as _engine
from stages.probe import settings as _settings
from stages.probe import stats as _stats
from stages.probe import tables as _tables
from stages.probe import tasks as _tasks

log = logging.getLogger("steep.baseline")


STAGE = cli.Stage(
    params=(
        "probe.precision",
        "probe.batch_size",
        "probe.max_new_tokens",
        "probe.multiple_choice_prompt",
        "probe.bertscore_model",
        "probe.showcase_prompts",
        "probe.tasks",
        # how a user turn is rendered (documents_as and document_prompt are the template stage's alone)
        "template.${key}.format",
        "template.${key}.prompts",
        "train.${key}.quantization",
        "train.${key}.compute_dtype",
    ),
    inputs={"model": "the variant's base checkpoint directory"},
    outputs={"out": "per-item results (Parquet)"},
    options={"cache": "per-task result cache directory"},
    local_paths=_settings.local_paths,
)
PARAMS = list(STAGE.params)


def task_metrics(tasks: list[_tasks.TaskData], rows: list[_tables.Row]) -> dict[str, Any]:
    """Per task: its type, its scores (``stats.aggregate``) and n."""
    out: dict[str, Any] = {}
    for t in tasks:
        mine = [r for r in rows if r["task"] == t.name]
        scores = _stats.aggregate(t.type, mine)
        log.info(
            "%s (%s, %d items): %s", t.name, t.type, len(mine), ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        )
        out[t.name] = {"type": t.type} | scores | {"n": len(mine)}
    return out


def run(
    params: _params.Scoped, *, variant: str, inputs: dict[str, Path], outputs: dict[str, Path], cache: Path
) -> dict[str, Any]:
    """Evaluate the pretrained model on every task; write the per-item rows; return the metrics.

    Args:
        params: the view of :data:`PARAMS` (``STAGE.keys(variant)``).
        variant: the variant (base, chat).
        inputs: ``{"model": <base checkpoint dir>}``.
        outputs: ``{"out": <per-item Parquet>}``.
        cache: the per-task result cache.

    Returns:
        ``{<task>: {"type": <type>, <score>: value, "n": items}, "tasks_evaluated": n, "tasks_cached": n}``.
    """
    s = _settings.settings(params, variant)
    tasks = _tasks.read_tasks(s.tasks)  # every file checked before a model is loaded
    engine = _engine.Engine(s, Path(inputs["model"]))
    rows, counts = _engine.evaluate(engine, tasks, Path(cache))
    metrics = task_metrics(tasks, rows) | counts  # before the output: a stage writes nothing until its work is done
    with _io.atomic_outputs(outputs["out"]) as (tmp,):
        _io.write_table(tmp, _tables.to_table(rows))
    return metrics


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the baseline stage's cmd in dvc.yaml."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
