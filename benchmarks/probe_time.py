"""Probe time of steep's probe engine, side by side with calling lm-evaluation-harness directly on the same tasks.

The tasks are the ``multiple_choice`` and ``perplexity`` entries of ``probe.tasks`` in ``params.yaml`` (the demo:
``general_mc``, 80 four-way questions, and ``general_text``, 24 paragraphs), every item, on the same model in
float32 on CPU with ``probe.batch_size``:

- ``steep``: ``stages.probe.engine.evaluate`` (what the baseline and probe stages run) with an empty cache: the model
  files are fingerprinted (sha256 of every file, the cache key), the model is loaded through
  ``train.load_base``, the multiple-choice tasks go through a generated task YAML and ``lm_eval.simple_evaluate``
  on an ``HFLM`` wrapping the loaded model (log_samples, per-item rows), the perplexity tasks through the same
  ``HFLM``'s ``loglikelihood_rolling``; the per-item rows are built and the cache written.
- ``direct``: ``lm_eval.simple_evaluate(model="hf", model_args={"pretrained": <dir>, "dtype": "float32"},
  device="cpu", batch_size=<same>)`` on hand-written task YAMLs over the same files: the multiple-choice one with
  ``doc_to_text`` the same prompt as a Jinja template, ``doc_to_choice`` / ``doc_to_target`` the file's fields,
  metrics acc and acc_norm; the perplexity one ``output_type: loglikelihood_rolling`` over the text field (as the
  harness's wikitext task), metrics word_perplexity, byte_perplexity and bits_per_byte.

Both sides skip the stderr bootstrap (``bootstrap_iters=0``) and index only the given task folder
(``TaskManager(include_path=..., include_defaults=False)``), so the ratio measures the evaluation itself. The timed
span is model load + evaluation (imports excluded: both import the same libraries); the numbers both sides
produced are printed next to each other (they agree: the engine is the harness).

Every run is a fresh subprocess; runs are interleaved steep, direct, direct, steep, ... so that load from other jobs
hits both alike; the ratio steep / direct is taken per pair and its median reported.

Model: ``--model DIR`` (default ``models/chat/base``, SmolLM2-135M-Instruct, materialized by ``dvc repro
models@chat``); ``--tiny``: a random 2-layer Llama (hidden 64, byte BPE vocabulary 300) like the probe tests.

Run (from the project root)::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/probe_time.py --tiny --repeats 3
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/probe_time.py --repeats 3

Writes ``benchmarks/results/probe_time.json`` (``--out``; a run merges its entry, keyed by model, into the file)
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.core import params as _params  # noqa: E402
from stages.core.params.probe import Probe  # noqa: E402
from stages.core.params.template import AlpacaPrompts  # noqa: E402
from stages.probe import engine as _engine  # noqa: E402
from stages.probe import settings as _settings  # noqa: E402
from stages.probe import stats as _stats  # noqa: E402
from stages.probe import tasks as _tasks  # noqa: E402
from stages.probe.model import Rendering  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "probe_time.json"
IMPLS = ("steep", "direct")
TYPES = ("multiple_choice", "perplexity")


def load_tasks(params_path: Path) -> tuple[Probe, list[_tasks.TaskData]]:
    """``probe`` from the params file and its multiple_choice / perplexity tasks, read and checked."""
    probe = _params.load(params_path, ["probe"]).probe
    tasks = [t for t in probe.tasks if t.type in TYPES]
    if not tasks:
        raise SystemExit(f"{params_path}: probe.tasks has no multiple_choice or perplexity task to time")
    return probe, _tasks.read_tasks(tasks)


def tiny_model(out: Path) -> Path:
    """A random 2-layer Llama with the tests' ChatML byte-BPE tokenizer, saved to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.stages._tiny import chat_tokenizer

    tok = chat_tokenizer(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


# --- the two sides, each run in its own process -----------------------------------------------------------------


def run_steep(args: argparse.Namespace, probe: Probe, tasks: list[_tasks.TaskData]) -> dict[str, Any]:
    """steep's engine, empty cache; returns the seconds and the task scores."""

    # generation settings are not used by these task types; a template is required by Settings
    template = Rendering(
        "alpaca",
        AlpacaPrompts(with_input="{instruction}{input}", without_input="{instruction}", next_turn="{instruction}"),
    )
    settings = _settings.Settings(
        precision="fp32", quantization="none", compute_dtype="float32", template=template,
        batch_size=probe.batch_size, max_new_tokens=probe.max_new_tokens,
        multiple_choice_prompt=probe.multiple_choice_prompt, bertscore_model=probe.bertscore_model,
        showcase_prompts=(), tasks=tuple(t.task for t in tasks),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        engine = _engine.Engine(settings, Path(args.model), device="cpu")
        rows, counts = _engine.evaluate(engine, tasks, Path(cache))
        seconds = time.perf_counter() - t0
    if counts["tasks_evaluated"] != len(tasks):
        raise RuntimeError(f"expected every task evaluated, got {counts}")
    scores = {t.name: _stats.aggregate(t.type, [r for r in rows if r["task"] == t.name]) for t in tasks}
    return {"seconds": seconds, "scores": scores}


def _direct_yaml(t: _tasks.TaskData, probe: Probe, tmp: Path) -> dict[str, Any]:
    f = t.task.fields
    base = {
        "task": f"direct_{t.name}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(t.task.path).resolve())}, "cache_dir": str(tmp / "hf")},
        "test_split": "test",
    }
    if t.type == "multiple_choice":
        prompt = (t.task.prompt or probe.multiple_choice_prompt).replace("{question}", "{{" + f["question"] + "}}")
        return base | {
            "output_type": "multiple_choice",
            "doc_to_text": prompt,
            "doc_to_choice": "{{" + f["choices"] + "}}",
            "doc_to_target": "{{" + f["answer"] + "}}",
            "target_delimiter": " ",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        }
    return base | {
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{" + f["text"] + "}}",
        "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
    }


def run_direct(args: argparse.Namespace, probe: Probe, tasks: list[_tasks.TaskData]) -> dict[str, Any]:
    """lm_eval.simple_evaluate with model="hf" on hand-written YAMLs over the same files."""
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        for t in tasks:
            (Path(tmp) / f"direct_{t.name}.yaml").write_text(yaml.safe_dump(_direct_yaml(t, probe, Path(tmp))))
        t0 = time.perf_counter()
        out = simple_evaluate(
            model="hf",
            model_args={"pretrained": str(args.model), "dtype": "float32"},
            tasks=[f"direct_{t.name}" for t in tasks],
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            batch_size=probe.batch_size,
            device="cpu",
            bootstrap_iters=0,
        )
        seconds = time.perf_counter() - t0
    scores = {}
    for t in tasks:
        res = out["results"][f"direct_{t.name}"]
        keys = ("acc", "acc_norm") if t.type == "multiple_choice" else ("bits_per_byte", "byte_perplexity")
        scores[t.name] = {k: round(res[f"{k},none"], 6) for k in keys}
    return {"seconds": seconds, "scores": scores}


def worker(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    probe, tasks = load_tasks(args.params)
    # imports outside the timed span, the same for both sides
    import lm_eval.models.huggingface  # noqa: F401
    import torch
    from lm_eval import simple_evaluate  # noqa: F401
    from lm_eval.api.instance import Instance  # noqa: F401
    from lm_eval.tasks import TaskManager  # noqa: F401
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: F401

    torch.set_num_threads(args.threads)
    result = (run_steep if args.worker == "steep" else run_direct)(args, probe, tasks)
    Path(args.result).write_text(json.dumps(result))


# --- the driver ------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "chat" / "base")
    ap.add_argument("--tiny", action="store_true", help="a random 2-layer Llama instead of --model")
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs (steep + direct)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    probe, tasks = load_tasks(args.params)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env |= {"TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny") if args.tiny else args.model
        runs: dict[str, list[dict[str, Any]]] = {i: [] for i in IMPLS}
        for r in range(args.repeats):
            for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:
                result = Path(tmp) / "result.json"
                cmd = [sys.executable, __file__, "--worker", impl, "--result", str(result), "--model", str(model)]
                cmd += ["--params", str(args.params), "--threads", str(args.threads)]
                t0 = time.perf_counter()
                done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(f"{impl} run failed:\n{done.stderr[-3000:]}")
                entry = json.loads(result.read_text()) | {"process_seconds": time.perf_counter() - t0}
                runs[impl].append(entry)
                print(f"repeat {r + 1} {impl:6s} {entry['seconds']:7.2f} s (process {entry['process_seconds']:.1f} s)")
    ratios = [s["seconds"] / d["seconds"] for s, d in zip(runs["steep"], runs["direct"], strict=True)]
    summary = {
        "model": "tiny random Llama (2 layers)" if args.tiny else str(args.model.relative_to(ROOT)),
        "tasks": {t.name: {"type": t.type, "items": len(t.items)} for t in tasks},
        "batch_size": probe.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "seconds": {i: [round(e["seconds"], 2) for e in runs[i]] for i in IMPLS},
        "median_seconds": {i: round(statistics.median(e["seconds"] for e in runs[i]), 2) for i in IMPLS},
        "median_ratio_steep_over_direct": round(statistics.median(ratios), 3),
        "scores": {i: runs[i][0]["scores"] for i in IMPLS},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
    }
    print(f"\n{'':8s}{'median s':>10s}  runs")
    for i in IMPLS:
        print(f"{i:8s}{summary['median_seconds'][i]:10.2f}  {summary['seconds'][i]}")
    print(f"median ratio steep / direct: {summary['median_ratio_steep_over_direct']:.3f}")
    for t in tasks:
        print(f"{t.name}: steep {summary['scores']['steep'][t.name]}  direct {summary['scores']['direct'][t.name]}")
    existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
    existing[summary["model"]] = summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
