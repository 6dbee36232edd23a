"""Train: fine-tune a variant's base model with a LoRA adapter (QLoRA: 4-bit NF4 base) through trl's SFTTrainer.

Inputs: ``--model`` (``models/<variant>/base``, the checkpoint of the models stage) and ``--data``
    (``data/tokenized/<variant>``, a ``DatasetDict`` with ``train`` and ``validation`` splits saved by
    ``save_to_disk``; columns ``input_ids``, ``labels`` (-100 on prompt tokens), ``attention_mask``; already
    truncated). The params ``train.<variant>`` and ``common.seed``.
Outputs: ``--out`` (``models/<variant>/adapter``): the best adapter by validation loss (not the last one), as
    ``adapter_model.safetensors`` + ``adapter_config.json``, the tokenizer, and ``steep_train.json`` (library
    versions, device, world size, best step, where the run is not deterministic); ``--metrics``
    (``metrics/train_<variant>.json``, flat); ``--live`` (``dvclive/train_<variant>``): per-step train/eval loss,
    learning rate, tokens/s and memory as dvclive plots.
Checkpoints: ``--checkpoints`` (``.steep_cache/checkpoints/<variant>``) is not a DVC output (DVC deletes outputs
    before a rerun): a run that finds a complete ``checkpoint-*`` there, made with the same params, data and base
    model (``steep_run.json`` holds their fingerprint), resumes from the newest; a successful run removes the folder.
Run: ``dvc repro train@chat`` (= ``python -m stages.variant.train --params params.yaml --variant chat
    --model models/chat/base --data data/tokenized/chat --out models/chat/adapter
    --checkpoints .steep_cache/checkpoints/chat --metrics metrics/train_chat.json --live dvclive/train_chat``).

Processes. ``num_processes: 1`` trains in this process (CUDA when present, else CPU). ``num_processes: N > 1``
relaunches the same command under ``torchrun --standalone --nproc_per_node N`` (DDP: NCCL on CUDA, gloo on CPU);
rank 0 writes every output.

Determinism. Seeds (python, numpy, torch, data order) come from ``common.seed``; on CPU the same inputs give the same
losses. CUDA kernels (cuBLAS, bitsandbytes dequantization, atomics in backward) are not bit-deterministic, which
``steep_train.json`` records.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.train import TrainSpec
from stages.variant.lm import device as _device
from stages.variant.lm import load_base

log = logging.getLogger("steep.train")

# dvc.yaml's `params:` for this foreach stage; `params_keys(variant)` fills in the variant.
PARAMS = ["common.seed", "train.${key}"]

RUN_RECORD = "steep_run.json"
ADAPTER_RECORD = "steep_train.json"
REQUIRED_COLUMNS = ("input_ids", "labels")
# log_history keys -> dvclive metric names (the plots in dvc.yaml read these files).
LIVE_METRICS = {
    "loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "memory_mb": "train/memory_mb",
    "eval_loss": "eval/loss",
}
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def params_keys(variant: str) -> list[str]:
    """The params keys the stage reads for `variant` (PARAMS with the variant filled in)."""
    return [k.replace("${key}", variant) for k in PARAMS]


def load_spec(path: Path, variant: str) -> tuple[int, TrainSpec]:
    """Load and validate the params file; return ``common.seed`` and ``train.<variant>``."""
    params = _params.load(path, params_keys(variant))
    return params.common.seed, _params.get(params, f"train.{variant}")


# --- checkpoints --------------------------------------------------------------


def fingerprint(spec: TrainSpec, seed: int, model_dir: Path, data_dir: Path) -> str:
    """sha256 of what a checkpoint depends on: params, seed, and every file of the base model and the data."""
    h = hashlib.sha256(json.dumps({"spec": spec.model_dump(), "seed": seed}, sort_keys=True).encode())
    for root in (model_dir, data_dir):
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(root)}\0".encode())
            with f.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-<step>`` (trainer_state.json is the last file a save writes)."""
    found = []
    for d in ckpt_dir.glob("checkpoint-*") if ckpt_dir.is_dir() else []:
        m = _CHECKPOINT.match(d.name)
        if m and (d / "trainer_state.json").is_file():
            found.append((int(m.group(1)), d))
    return max(found)[1] if found else None


def _prepare_checkpoints(ckpt_dir: Path, fp: str, is_main: bool) -> Path | None:
    """Return the checkpoint to resume from; checkpoints of other params/data/model are removed (by rank 0)."""
    record = ckpt_dir / RUN_RECORD
    if ckpt_dir.exists():
        old = json.loads(record.read_text()).get("fingerprint") if record.is_file() else None
        if old != fp:
            if is_main:
                log.info("%s holds checkpoints of other params, data or base model; starting afresh", ckpt_dir)
                shutil.rmtree(ckpt_dir)
            return None
        return latest_checkpoint(ckpt_dir)
    return None


# --- the model ----------------------------------------------------------------


def add_adapter(model: Any, spec: TrainSpec) -> Any:
    """Wrap `model` in a trainable LoRA adapter (k-bit preparation first for a quantized base)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if spec.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.use_gradient_checkpointing)
    elif spec.use_gradient_checkpointing:
        model.enable_input_require_grads()
    cfg = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def load_data(data_dir: Path) -> Any:
    """The tokenized DatasetDict; raise StageError naming the expected format next to what was found."""
    from datasets import DatasetDict, load_from_disk

    expected = (
        "a DatasetDict saved with save_to_disk, splits 'train' and 'validation', "
        f"columns {list(REQUIRED_COLUMNS)} (+ attention_mask)"
    )
    try:
        data = load_from_disk(str(data_dir))
    except FileNotFoundError as e:
        raise StageError(f"{data_dir}: not a saved dataset ({e}); expected {expected}") from None
    if not isinstance(data, DatasetDict) or not {"train", "validation"} <= set(data):
        got = sorted(data) if isinstance(data, DatasetDict) else type(data).__name__
        raise StageError(f"{data_dir}: expected {expected}; got {got}")
    for split in ("train", "validation"):
        missing = [c for c in REQUIRED_COLUMNS if c not in data[split].column_names]
        if missing or len(data[split]) == 0:
            raise StageError(
                f"{data_dir}: split {split!r} has {len(data[split])} rows, columns {data[split].column_names}; "
                f"missing {missing}; expected {expected} with at least one row"
            )
    return data


# --- logging ------------------------------------------------------------------


def _memory_mb(device: str) -> float:
    """Peak CUDA memory allocated, or the process's resident memory (RSS) on CPU, in MiB."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class _Live:
    """dvclive logging with steps = the trainer's global step; history replayed from a checkpoint on resume."""

    def __init__(self, live_dir: Path, history: list[dict[str, Any]]):
        from dvclive import Live

        shutil.rmtree(live_dir, ignore_errors=True)
        # dvcyaml=None: plots are declared in the project's dvc.yaml, which dvclive must not rewrite.
        self.live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
        for entry in history:
            self.write(entry, entry["step"])

    def write(self, logs: dict[str, Any], step: int) -> None:
        vals = {LIVE_METRICS[k]: v for k, v in logs.items() if k in LIVE_METRICS}
        if not vals:
            return
        self.live.step = step
        for name, val in vals.items():
            self.live.log_metric(name, float(val))
        self.live.make_summary()

    def end(self) -> None:
        self.live.end()


def _callbacks(trainer_cls: Any) -> Any:
    """Build the SFTTrainer subclass that adds tokens/s and memory to every training log entry."""

    class Trainer(trainer_cls):
        live: _Live | None = None
        steep_device = "cpu"
        _mark: tuple[float, int] | None = None

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                now, seen = time.perf_counter(), self.state.num_input_tokens_seen
                if self._mark is not None and now > self._mark[0]:
                    logs["tokens_per_s"] = (seen - self._mark[1]) / (now - self._mark[0])
                self._mark = (now, seen)
                logs["memory_mb"] = _memory_mb(self.steep_device)
            super().log(logs, start_time)
            if self.live is not None:
                self.live.write(logs, self.state.global_step)

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            if self._mark is None:  # first step of this session (after a resume: of the resumed part)
                self._mark = (time.perf_counter(), self.state.num_input_tokens_seen)
            return super().training_step(*args, **kwargs)

    return Trainer


# --- the stage ----------------------------------------------------------------


def run(
    spec: TrainSpec,
    seed: int,
    *,
    inputs: dict[str, Path],
    outputs: dict[str, Path],
    checkpoints: Path,
    rank: tuple[int, int, int] = (0, 0, 1),
) -> dict[str, Any]:
    """Train the adapter; rank 0 writes ``outputs["out"]`` and ``outputs["live"]``; return the metrics.

    Args:
        spec: the variant's ``train`` section.
        seed: ``common.seed``.
        inputs: ``{"model": <base checkpoint dir>, "data": <tokenized DatasetDict dir>}``.
        outputs: ``{"out": <adapter dir>, "live": <dvclive dir>}``.
        checkpoints: the resumable checkpoints folder (not a DVC output); removed after success.
        rank: (global rank, local rank, world size) of this process; (0, 0, 1) without DDP.

    Returns:
        Flat metrics: train_loss (last logged), eval_loss (best), first_eval_loss, best_step, steps,
        tokens_per_s, peak_memory_mb, stopped_early, resumed (false on an uninterrupted run), world_size.
    """
    import torch
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    global_rank, local_rank, world = rank
    is_main = global_rank == 0
    device = _device()
    if device == "cuda" and world > torch.cuda.device_count():
        raise StageError(f"train num_processes {world} > {torch.cuda.device_count()} visible CUDA devices")
    model_dir, data_dir = Path(inputs["model"]), Path(inputs["data"])
    checkpoints = Path(checkpoints)
    set_seed(seed)
    data = load_data(data_dir)
    fp = fingerprint(spec, seed, model_dir, data_dir)
    resume = _prepare_checkpoints(checkpoints, fp, is_main)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
        torch.distributed.barrier()  # rank 0 may have removed stale checkpoints
    if is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        _io.write_json(checkpoints / RUN_RECORD, {"fingerprint": fp})
    log.info(
        "device %s, world size %d, %d train / %d validation rows; %s",
        device,
        world,
        len(data["train"]),
        len(data["validation"]),
        f"resuming from {resume} (step {resume.name.split('-')[1]})" if resume else "starting from step 0",
    )

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = add_adapter(load_base(model_dir, spec, device, local_rank), spec)
    if is_main:
        trainable, total = model.get_nb_trainable_parameters()
        log.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)

    bf16 = spec.compute_dtype == "bfloat16"
    args = SFTConfig(
        output_dir=str(checkpoints),
        seed=seed,
        data_seed=seed,
        max_steps=spec.max_steps,
        per_device_train_batch_size=spec.per_device_batch_size,
        per_device_eval_batch_size=spec.per_device_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_ratio,  # a float in [0, 1) is a ratio of max_steps (transformers 5)
        logging_strategy="steps",
        logging_steps=spec.log_every_steps,
        eval_strategy="steps",
        eval_steps=spec.eval_every_steps,
        save_strategy="steps",
        save_steps=spec.save_every_steps,
        save_total_limit=spec.max_checkpoints,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        gradient_checkpointing=spec.use_gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16,
        use_cpu=device == "cpu",
        ddp_backend=("nccl" if device == "cuda" else "gloo") if world > 1 else None,
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        # The data is tokenized, labelled (-100 on prompts) and truncated upstream: trl must neither
        # re-tokenize, truncate, pack nor rebuild labels. Its collator pads input_ids / labels (-100) and
        # builds attention_mask from the lengths (right padding), so the stored attention_mask is not needed.
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        packing=False,
        padding_free=False,
        report_to="none",
        disable_tqdm=True,
    )
    callbacks = [EarlyStoppingCallback(spec.early_stopping_patience)] if spec.early_stopping_patience else []
    trainer = _callbacks(SFTTrainer)(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.steep_device = device
    resumed_state = json.loads((resume / "trainer_state.json").read_text()) if resume else {}
    seen_before = resumed_state.get("num_input_tokens_seen", 0)  # tokens/s counts this session's tokens only
    if is_main:
        trainer.live = _Live(Path(outputs["live"]), resumed_state.get("log_history", []))
    out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state = trainer.state

    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    evals = [e for e in state.log_history if "eval_loss" in e]
    if not evals:
        raise StageError(f"no validation loss was computed in {state.global_step} steps; lower eval_every_steps")
    best_step = int(Path(state.best_model_checkpoint).name.split("-")[1]) if state.best_model_checkpoint else None
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    metrics = {
        "train_loss": train_losses[-1] if train_losses else out.training_loss,
        "eval_loss": state.best_metric,
        "first_eval_loss": evals[0]["eval_loss"],
        "best_step": best_step,
        "steps": state.global_step,
        "stopped_early": state.global_step < spec.max_steps,
        "tokens_per_s": round((state.num_input_tokens_seen - seen_before) / out.metrics["train_runtime"], 1),
        "peak_memory_mb": round(peak, 1),
        "resumed": resume is not None,
        "world_size": world,
    }
    if is_main:
        trainer.live.end()
        record = {
            "base_model": str(model_dir),
            "best_step": best_step,
            "device": device,
            "world_size": world,
            "quantization": spec.quantization,
            "deterministic": device == "cpu",
            "nondeterminism": (
                "CUDA kernels (cuBLAS, bitsandbytes dequantization, atomic adds in backward) are not "
                "bit-deterministic: reruns differ in the last bits"
                if device == "cuda"
                else None
            ),
            "versions": {
                p: importlib.metadata.version(p)
                for p in ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets")
            },
        }
        with _io.atomic_outputs(outputs["out"]) as (tmp,):
            # The best checkpoint's adapter is loaded back (load_best_model_at_end): save only the adapter.
            for config in trainer.model.peft_config.values():
                # peft keeps the resolved target modules as a set and writes them in hash order: sort for stable bytes
                if isinstance(config.target_modules, set):
                    config.target_modules = sorted(config.target_modules)
            trainer.model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            _io.scrub_load_state(tmp)
            _io.write_json(tmp / ADAPTER_RECORD, record)
        shutil.rmtree(checkpoints, ignore_errors=True)
        log.info("wrote %s (best step %s, eval loss %.4f)", outputs["out"], best_step, state.best_metric)
    if world > 1:
        torch.distributed.barrier()
    return metrics


def _ddp_rank() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def main() -> None:
    """Command line: the flags of the train stage's cmd in dvc.yaml."""
    ap = argparse.ArgumentParser(prog="python -m stages.variant.train", description=__doc__.split("\n")[0])
    ap.add_argument("--params", required=True, type=Path, help="params.yaml")
    ap.add_argument("--variant", required=True, help="the variant to train (base, chat)")
    ap.add_argument("--model", required=True, type=Path, help="base model checkpoint directory")
    ap.add_argument("--data", required=True, type=Path, help="tokenized DatasetDict directory")
    ap.add_argument("--out", required=True, type=Path, help="adapter directory to write")
    ap.add_argument("--checkpoints", required=True, type=Path, help="resumable checkpoints (not a DVC output)")
    ap.add_argument("--metrics", required=True, type=Path, help="metrics JSON")
    ap.add_argument("--live", required=True, type=Path, help="dvclive directory")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    seed, spec = load_spec(args.params, args.variant)
    rank = _ddp_rank()
    if spec.num_processes > 1 and "LOCAL_RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.num_processes}"]
        cmd += ["-m", "stages.variant.train", *sys.argv[1:]]
        log.info("relaunching under torchrun with %d processes", spec.num_processes)
        code = subprocess.run(cmd, check=False).returncode
        if code:
            raise StageError(f"torchrun with {spec.num_processes} processes failed (exit code {code})")
        return
    if rank[0] == 0:
        cli.log_params(f"common.seed={seed}, train.{args.variant}", spec)
    metrics = run(
        spec,
        seed,
        inputs={"model": args.model, "data": args.data},
        outputs={"out": args.out, "live": args.live},
        checkpoints=args.checkpoints,
        rank=rank,
    )
    if rank[0] == 0:
        with _io.atomic_outputs(args.metrics) as (tmp,):
            _io.write_json(tmp, metrics)


if __name__ == "__main__":
    cli.run_main(main)
