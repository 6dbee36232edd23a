"""Training support for the train stage: resumable checkpoints, the adapter's output, dvclive logging and memory.

A shared module, not a stage: the train stage's recipe uses :func:`prepare_checkpoints` (resume only from complete
checkpoints of the same params, data, base model, code, libraries and device), :func:`trainer_class` (checkpoints
marked complete, an exact resume, tokens/s and memory in every log entry, written to dvclive by :class:`Live`),
:func:`peak_memory_mb` and :func:`save_adapter` (stable bytes);
``benchmarks/train_throughput.py`` wraps :func:`trainer_class` to time the stage's steps.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from stages.core import code as _code
from stages.core import io as _io
from stages.core.params.train import TrainSpec
from stages.variant.lm import keep_4bit_layout

# The train stage's logger: its log lines read the same wherever the code lives.
log = logging.getLogger("steep.train")

RUN_RECORD = "steep_run.json"
# Written last into a checkpoint by :func:`mark_complete`: the checkpoint is whole.
COMPLETE = "steep_checkpoint.json"
# The libraries whose versions a checkpoint is tied to (:func:`fingerprint`).
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")
ADAPTER_RECORD = "steep_train.json"
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


# --- checkpoints --------------------------------------------------------------


def fingerprint(spec: TrainSpec, seed: int, model_dir: Path, data_dir: Path, device: str) -> str:
    """sha256 of what a checkpoint's continuation depends on: params, seed, every file of the base model and the
    data, the train stage's code, the library versions and the device and CPU kernels (a checkpoint resumed by other
    code or on another machine would not continue the run it came from)."""
    import torch

    versions = {p: importlib.metadata.version(p) for p in LIBRARIES}
    where = {"device": device, "cpu": torch.backends.cpu.get_cpu_capability()}
    head = {"spec": spec.model_dump(), "seed": seed, "versions": versions, "where": where}
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    h.update(_code.code_hash("stages.variant.train").encode())
    for root in (model_dir, data_dir):
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(root)}\0".encode())
            _io.feed(h, f)
    return h.hexdigest()


def mark_complete(ckpt: Path) -> None:
    """Write ``steep_checkpoint.json`` into `ckpt`, last: the size and sha256 of every file the save wrote.

    The files are flushed to disk first, and the record is written under a temporary name and renamed, so a
    checkpoint with a record is whole, and one without (a save that was killed or ran out of disk) is not.
    """
    files = {}
    for f in sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != COMPLETE):
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
        files[f.relative_to(ckpt).as_posix()] = {"bytes": f.stat().st_size, "sha256": _io.sha256_file(f)}
    tmp = ckpt / f".{COMPLETE}.tmp"
    _io.write_json(tmp, {"files": files})
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(ckpt / COMPLETE)


def incomplete(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from (no completeness record, a file missing, cut or changed), or None."""
    try:
        files = json.loads((ckpt / COMPLETE).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"no readable {COMPLETE} (the save did not finish: {type(e).__name__})"
    for name, info in sorted(files.items()):
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != info["bytes"] or _io.sha256_file(f) != info["sha256"]:
            return f"{name} is not the file the save wrote ({f.stat().st_size} bytes, {info['bytes']} recorded)"
    return None


def latest_checkpoint(ckpt_dir: Path, *, remove: bool = False) -> Path | None:
    """The newest complete ``checkpoint-<step>`` in `ckpt_dir` (see :func:`incomplete`), or None.

    An incomplete one is skipped with a warning naming it and why, and the next older one is tried; with
    `remove`, the incomplete ones newer than the one returned are deleted (a resumed run saves that step again).
    """
    found = []
    for d in ckpt_dir.glob("checkpoint-*") if ckpt_dir.is_dir() else []:
        m = _CHECKPOINT.match(d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    for _, d in sorted(found, reverse=True):
        why = incomplete(d)
        if why is None:
            return d
        log.warning("checkpoint %s is incomplete (%s): skipped%s", d, why, ", and removed" if remove else "")
        if remove:
            shutil.rmtree(d)
    return None


def prepare_checkpoints(ckpt_dir: Path, fp: str, is_main: bool) -> Path | None:
    """Return the checkpoint to resume from; checkpoints of other params/data/model/code are removed (by rank 0),
    and so are incomplete ones."""
    record = ckpt_dir / RUN_RECORD
    if ckpt_dir.exists():
        try:
            old = json.loads(record.read_text()).get("fingerprint") if record.is_file() else None
        except (OSError, ValueError, AttributeError):
            old = None
        if old != fp:
            if is_main:
                log.info("%s holds checkpoints of other params, data, base model or code; starting afresh", ckpt_dir)
                shutil.rmtree(ckpt_dir)
            return None
        return latest_checkpoint(ckpt_dir, remove=is_main)
    return None


# --- the adapter --------------------------------------------------------------


def save_adapter(model: Any, tokenizer: Any, out_dir: Path, record: dict[str, Any]) -> None:
    """Write `model`'s adapter, the tokenizer and `record` (as ``steep_train.json``) into `out_dir`, atomically."""
    with _io.atomic_outputs(out_dir) as (tmp,):
        # The best checkpoint's adapter is loaded back (load_best_model_at_end): save only the adapter.
        for config in model.peft_config.values():
            # peft keeps the resolved target modules as a set and writes them in hash order: sort for stable bytes
            if isinstance(config.target_modules, set):
                config.target_modules = sorted(config.target_modules)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _io.scrub_load_state(tmp)
        _io.write_json(tmp / ADAPTER_RECORD, record)


# --- logging and memory -------------------------------------------------------


def memory_mb(device: str) -> float:
    """Peak CUDA memory allocated, or the process's resident memory (RSS) on CPU, in MiB."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_memory_mb(device: str) -> float:
    """Peak CUDA memory allocated, or the process's peak resident memory (max RSS) on CPU, in MiB."""
    import torch

    return (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )


class Live:
    """dvclive logging with steps = the trainer's global step; history replayed from a checkpoint on resume."""

    def __init__(self, live_dir: Path, history: list[dict[str, Any]]):
        from dvclive import Live as DvcLive

        shutil.rmtree(live_dir, ignore_errors=True)
        # dvcyaml=None: plots are declared in the project's dvc.yaml, which dvclive must not rewrite.
        self.live = DvcLive(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
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


# --- numerics that a resume must reproduce ----------------------------------------------


def cast_adapter(model: Any, dtype: str) -> None:
    """Make the trainable (adapter) parameters `dtype` (``float32``, ``bfloat16``): trl casts a quantized model's
    adapter to bfloat16 and peft's ``load_adapter`` casts it back to float32, so without one dtype set here a
    resumed run would train in another precision than the run it continues."""
    import torch

    dtype = getattr(torch, dtype)
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def trainer_class(trainer_cls: Any) -> Any:
    """Build the SFTTrainer subclass that adds tokens/s and memory to every training log entry.

    Its loss is the model's own (transformers' ``Trainer.compute_loss``), not trl's fused-head loss with its
    per-step entropy and token accuracy: trl's ``entropy`` and ``mean_token_accuracy`` are not logged.
    Its checkpoints count only when complete (:func:`mark_complete`, written before older ones are rotated out);
    `adapter_dtype` (``float32``, ``bfloat16``; None: as trl leaves it) is the adapter's dtype from the start and
    after a resume, and 4-bit layers keep their layout (:func:`keep_4bit_layout`).
    """

    class Trainer(trainer_cls):
        live: Live | None = None
        steep_device = "cpu"
        _mark: tuple[float, int] | None = None

        def __init__(self, *args: Any, adapter_dtype: str | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            keep_4bit_layout(self.model)
            self.steep_adapter_dtype = adapter_dtype
            if adapter_dtype is not None:
                cast_adapter(self.model, adapter_dtype)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            if self.steep_adapter_dtype is not None:  # peft's load_adapter upcasts the adapter to float32
                cast_adapter(self.model if model is None else model, self.steep_adapter_dtype)

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            # The checkpoint is marked complete before older ones are rotated out, so that a kill at any point
            # of the save leaves a complete one to resume from.
            from transformers.trainer_utils import rotate_checkpoints

            limit = self.args.save_total_limit
            self.args.save_total_limit = None
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            self.accelerator.wait_for_everyone()  # every rank has written its RNG state
            if self.args.should_save:
                run_dir = self._get_output_dir(trial=trial)
                mark_complete(Path(run_dir) / f"checkpoint-{self.state.global_step}")
                best = self.state.best_model_checkpoint
                rotate_checkpoints(run_dir, save_total_limit=limit, best_model_checkpoint=best, use_mtime=True)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                now, seen = time.perf_counter(), self.state.num_input_tokens_seen
                if self._mark is not None and now > self._mark[0]:
                    logs["tokens_per_s"] = (seen - self._mark[1]) / (now - self._mark[0])
                self._mark = (now, seen)
                logs["memory_mb"] = memory_mb(self.steep_device)
            super().log(logs, start_time)
            if self.live is not None:
                self.live.write(logs, self.state.global_step)

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            # The model's own causal-LM loss, as a bare transformers loop computes it. trl's SFTTrainer loss runs
            # its fused LM head (off CUDA/Triton: every position scored in chunks, the logits recomputed in
            # backward) and computes entropy and token accuracy each step for its logs: 1.27x a bare loop's
            # time per step on SmolLM2 on CPU (benchmarks/train_throughput.py). Same loss, same gradients.
            from transformers import Trainer as HfTrainer

            inputs = {**inputs, "use_cache": False}
            return HfTrainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            if self._mark is None:  # first step of this session (after a resume: of the resumed part)
                self._mark = (time.perf_counter(), self.state.num_input_tokens_seen)
            return super().training_step(*args, **kwargs)

    return Trainer
