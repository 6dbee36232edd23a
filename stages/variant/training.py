"""Training support for the train stage: resumable checkpoints, the adapter's output, dvclive logging and memory.

A shared module, not a stage: the train stage's recipe uses :func:`prepare_checkpoints` (resume only from
checkpoints of the same params, data and base model), :func:`trainer_class` (tokens/s and memory in every log
entry, written to dvclive by :class:`Live`), :func:`peak_memory_mb` and :func:`save_adapter` (stable bytes);
``benchmarks/train_throughput.py`` wraps :func:`trainer_class` to time the stage's steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from stages.core import io as _io
from stages.core.params.train import TrainSpec

# The train stage's logger: its log lines read the same wherever the code lives.
log = logging.getLogger("steep.train")

RUN_RECORD = "steep_run.json"
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


def prepare_checkpoints(ckpt_dir: Path, fp: str, is_main: bool) -> Path | None:
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


def trainer_class(trainer_cls: Any) -> Any:
    """Build the SFTTrainer subclass that adds tokens/s and memory to every training log entry.

    Its loss is the model's own (transformers' ``Trainer.compute_loss``), not trl's fused-head loss with its
    per-step entropy and token accuracy: trl's ``entropy`` and ``mean_token_accuracy`` are not logged.
    """

    class Trainer(trainer_cls):
        live: Live | None = None
        steep_device = "cpu"
        _mark: tuple[float, int] | None = None

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
