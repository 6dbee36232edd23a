"""Train: fine-tune a variant's base model with a LoRA adapter (QLoRA: 4-bit NF4 base) through trl's SFTTrainer.

Inputs: ``--model`` (``models/<variant>/base``, the checkpoint of the models stage) and ``--data``
    (``data/tokenized/<variant>``, a ``DatasetDict`` with ``train`` and ``validation`` splits saved by
    ``save_to_disk``; columns ``input_ids``, ``labels`` (-100 on prompt tokens), ``attention_mask``; already
    truncated). The params ``train.<variant>`` and ``common.seed``.
Outputs: ``--out`` (``models/<variant>/adapter``): the adapter ``select`` names (``eval_loss``: the saved
    checkpoint with the lowest validation loss; ``last``: the adapter after the final step), as
    ``adapter_model.safetensors`` + ``adapter_config.json``, the tokenizer, and ``steep_train.json`` (library
    versions, device, world size, best step, where the run is not deterministic); ``--metrics``
    (``metrics/train_<variant>.json``, flat); ``--live`` (``dvclive/train_<variant>``): per-step train/eval loss,
    learning rate, tokens/s and memory as dvclive plots.
Checkpoints: ``--checkpoints`` (``.steep_cache/checkpoints/<variant>``) is not a DVC output (DVC deletes outputs
    before a rerun): a run resumes from the newest complete ``checkpoint-*`` there of the same params, data, base
    model, code, libraries and device (:func:`training.prepare_checkpoints`); a successful run removes the folder.
Run: ``dvc repro train@chat`` (= ``python -m stages.variant.train --params params.yaml --variant chat
    --model models/chat/base --data data/tokenized/chat --out models/chat/adapter
    --checkpoints .steep_cache/checkpoints/chat --metrics metrics/train_chat.json --live dvclive/train_chat``).

Schedule. ``max_steps`` optimizer steps, or with ``max_steps: 0`` ``epochs`` passes over the train split (which the
tokenize stage's mixture may already repeat per source and kind); ``optimizer``, ``weight_decay`` and
``max_grad_norm`` are transformers' ``optim``, ``weight_decay`` and ``max_grad_norm``. Rows the tokenize stage packed
(``use_packing``) train padding-free: one flattened row a batch, attention kept within each example.

Processes. ``num_processes: 1`` trains in this process (CUDA when present, else CPU). ``num_processes: N > 1``
relaunches the same command under ``torchrun --standalone --nproc_per_node N`` (DDP: NCCL on CUDA, gloo on CPU);
rank 0 writes every output.

Determinism. Seeds (python, numpy, torch, data order) come from ``common.seed``; on CPU the same inputs give the same
losses, and a run resumed from a checkpoint gives the uninterrupted run's adapter (the adapter's dtype and the 4-bit
layout pinned: :mod:`stages.variant.training`). CUDA kernels (cuBLAS, bitsandbytes dequantization, atomics in
backward) are not bit-deterministic, which ``steep_train.json`` records.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.train import TrainSpec
from stages.variant import training
from stages.variant.lm import device as _device
from stages.variant.lm import load_base

log = logging.getLogger("steep.train")

STAGE = cli.Stage(
    params=("common.seed", "train.${key}"),
    inputs={"model": "base model checkpoint directory", "data": "tokenized DatasetDict directory"},
    outputs={"out": "adapter directory to write", "live": "dvclive directory"},
    options={"checkpoints": "resumable checkpoints (not a DVC output)"},
)
PARAMS = list(STAGE.params)

REQUIRED_COLUMNS = ("input_ids", "labels")


# --- the model and the data ---------------------------------------------------


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


# --- the recipe's steps -------------------------------------------------------


def _setup_device(world: int) -> str:
    """The device to train on (``cuda`` or ``cpu``), checked against the number of processes."""
    import torch

    device = _device()
    if device == "cuda" and world > torch.cuda.device_count():
        raise StageError(f"train num_processes {world} > {torch.cuda.device_count()} visible CUDA devices")
    return device


def _setup_checkpoints(checkpoints: Path, fp: str, device: str, world: int, is_main: bool) -> Path | None:
    """The checkpoint to resume from, or None; stale checkpoints removed and this run's fingerprint `fp` recorded.

    Under DDP the process group starts here: every rank waits until rank 0 has removed stale checkpoints.
    """
    import torch

    resume = training.prepare_checkpoints(checkpoints, fp, is_main)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
        torch.distributed.barrier()  # rank 0 may have removed stale checkpoints
    if is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        _io.write_json(checkpoints / training.RUN_RECORD, {"fingerprint": fp})
    return resume


def _setup_tokenizer(model_dir: Path) -> Any:
    """The base model's tokenizer, padding with its end-of-sequence token where it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _setup_model(model_dir: Path, spec: TrainSpec, device: str, local_rank: int, is_main: bool) -> Any:
    """The (quantized) base model with a trainable LoRA adapter."""
    model = add_adapter(load_base(model_dir, spec, device, local_rank), spec)
    # Training reads no KV cache; and with one, transformers skips the block-diagonal mask of packed rows
    # (position ids restarting), so packed examples would attend to one another.
    model.config.use_cache = False
    if is_main:
        trainable, total = model.get_nb_trainable_parameters()
        log.info("trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def is_packed(data: Any) -> bool:
    """Whether the tokenize stage packed several examples into a row (a ``seq_lengths`` of more than one entry)."""
    split = data["train"]
    return "seq_lengths" in split.column_names and any(len(n) > 1 for n in split["seq_lengths"])


def _setup_args(spec: TrainSpec, seed: int, checkpoints: Path, device: str, world: int, packed: bool) -> Any:
    """The SFTConfig: schedule, optimizer, evaluation, checkpointing and precision from `spec`; data used as
    tokenized (`packed`: padding-free, each packed example attending to itself only)."""
    from trl import SFTConfig

    bf16 = spec.compute_dtype == "bfloat16"
    if device == "cpu" and spec.optimizer.startswith("paged_"):
        log.info("optimizer %s: bitsandbytes has no paged memory on CPU and runs it unpaged", spec.optimizer)
    return SFTConfig(
        output_dir=str(checkpoints),
        seed=seed,
        data_seed=seed,
        # max_steps -1: the number of steps follows from num_train_epochs (exactly one of the two is set)
        max_steps=spec.max_steps or -1,
        num_train_epochs=spec.epochs or 1.0,
        optim=spec.optimizer,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
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
        load_best_model_at_end=spec.select == "eval_loss",
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        gradient_checkpointing=spec.use_gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16,
        use_cpu=device == "cpu",
        ddp_backend=("nccl" if device == "cuda" else "gloo") if world > 1 else None,
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        # The data is tokenized, labelled (-100 on prompts), truncated and packed upstream: trl must neither
        # re-tokenize, truncate, pack nor rebuild labels. Its collator pads input_ids / labels (-100) and
        # builds attention_mask from the lengths (right padding), so the stored attention_mask is not needed.
        # Packed rows train padding-free instead: the collator flattens the batch into one row with position ids
        # restarting at each example (from seq_lengths), and transformers masks attention block-diagonally from
        # them, so that no example attends to its neighbour in a packed row.
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        packing=False,
        padding_free=packed,
        report_to="none",
        disable_tqdm=True,
    )


def _setup_trainer(spec: TrainSpec, args: Any, model: Any, tokenizer: Any, data: Any, device: str) -> Any:
    """The SFTTrainer (with tokens/s and memory logging) on the train split, evaluated on validation."""
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    # (select: last has no patience: TrainSpec refuses one)
    callbacks = [EarlyStoppingCallback(spec.early_stopping_patience)] if spec.early_stopping_patience else []
    trainer = training.trainer_class(SFTTrainer)(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        callbacks=callbacks,
        adapter_dtype=spec.compute_dtype,  # trl would train a quantized model's adapter in bfloat16
    )
    trainer.steep_device = device
    return trainer


def _metrics(
    trainer: Any, out: Any, spec: TrainSpec, device: str, world: int, resume: Path | None, seen: int
) -> dict[str, Any]:
    """The stage's flat metrics from the finished trainer; `seen`: input tokens counted before this session."""
    state = trainer.state
    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    evals = [e for e in state.log_history if "eval_loss" in e]
    if not evals:
        raise StageError(f"no validation loss was computed in {state.global_step} steps; lower eval_every_steps")
    best_step = int(Path(state.best_model_checkpoint).name.split("-")[1]) if state.best_model_checkpoint else None
    eval_loss = state.best_metric
    if spec.select == "last":  # the kept adapter is the final step's; its loss is the last one measured
        best_step, eval_loss = state.global_step, evals[-1]["eval_loss"]
    return {
        "train_loss": train_losses[-1] if train_losses else out.training_loss,
        "eval_loss": eval_loss,
        "first_eval_loss": evals[0]["eval_loss"],
        "best_step": best_step,
        "steps": state.global_step,
        "stopped_early": state.global_step < state.max_steps,
        "tokens_per_s": round((state.num_input_tokens_seen - seen) / out.metrics["train_runtime"], 1),
        "peak_memory_mb": round(training.peak_memory_mb(device), 1),
        "resumed": resume is not None,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
        "world_size": world,
    }


def _adapter_record(model_dir: Path, best_step: int | None, spec: TrainSpec, device: str, world: int) -> dict[str, Any]:
    """What ``steep_train.json`` records: base model, best step, device, world size, determinism, versions."""
    return {
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


# --- the stage ----------------------------------------------------------------


def run(
    params: _params.Scoped,
    *,
    variant: str,
    inputs: dict[str, Path],
    outputs: dict[str, Path],
    checkpoints: Path,
    rank: tuple[int, int, int] | None = None,
) -> dict[str, Any] | None:
    """Train the adapter; rank 0 writes ``outputs["out"]`` and ``outputs["live"]`` and returns the metrics.

    Args:
        params: the scoped params (``common.seed``, ``train.<variant>``).
        variant: the variant trained.
        inputs: ``{"model": <base checkpoint dir>, "data": <tokenized DatasetDict dir>}``.
        outputs: ``{"out": <adapter dir>, "live": <dvclive dir>}``.
        checkpoints: the resumable checkpoints folder (not a DVC output); removed after success.
        rank: (global rank, local rank, world size) of this process; None: as torchrun's environment says
            ((0, 0, 1) without DDP).

    Returns:
        On rank 0 (None on the others), flat metrics: train_loss (last logged), eval_loss (the kept adapter's),
        first_eval_loss, best_step, steps, tokens_per_s, peak_memory_mb, stopped_early, resumed (false on an
        uninterrupted run), resumed_from_step (the checkpoint's step, or None), world_size.
    """
    from transformers import set_seed

    # Imported before set_seed, as it always was: importing trl draws from Python's `random`.
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    spec: TrainSpec = _params.get(params, f"train.{variant}")
    seed: int = params.common.seed
    global_rank, local_rank, world = _ddp_rank() if rank is None else rank
    is_main = global_rank == 0
    device = _setup_device(world)
    model_dir, data_dir = Path(inputs["model"]), Path(inputs["data"])
    checkpoints = Path(checkpoints)
    set_seed(seed)
    data = load_data(data_dir)
    fp = training.fingerprint(spec, seed, model_dir, data_dir, device)
    resume = _setup_checkpoints(checkpoints, fp, device, world, is_main)
    log.info(
        "device %s, world size %d, %d train / %d validation rows; %s",
        device,
        world,
        len(data["train"]),
        len(data["validation"]),
        f"resuming from {resume} (step {resume.name.split('-')[1]})" if resume else "starting from step 0",
    )
    tokenizer = _setup_tokenizer(model_dir)
    model = _setup_model(model_dir, spec, device, local_rank, is_main)
    args = _setup_args(spec, seed, checkpoints, device, world, is_packed(data))
    trainer = _setup_trainer(spec, args, model, tokenizer, data, device)

    resumed_state = json.loads((resume / "trainer_state.json").read_text()) if resume else {}
    seen_before = resumed_state.get("num_input_tokens_seen", 0)  # tokens/s counts this session's tokens only
    if is_main:
        trainer.live = training.Live(Path(outputs["live"]), resumed_state.get("log_history", []))
    out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = _metrics(trainer, out, spec, device, world, resume, seen_before)
    if is_main:
        trainer.live.end()
        record = _adapter_record(model_dir, metrics["best_step"], spec, device, world)
        training.save_adapter(trainer.model, tokenizer, outputs["out"], record)
        shutil.rmtree(checkpoints, ignore_errors=True)
        log.info("wrote %s (best step %s, eval loss %.4f)", outputs["out"], metrics["best_step"], metrics["eval_loss"])
    if world > 1:
        import torch

        torch.distributed.barrier()
    return metrics if is_main else None


def _ddp_rank() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def _relaunch(params: _params.Scoped, args: Any) -> bool:
    """With ``num_processes`` > 1, outside torchrun: run this command under torchrun instead (True when done)."""
    spec: TrainSpec = _params.get(params, f"train.{args.variant}")
    if spec.num_processes <= 1 or "LOCAL_RANK" in os.environ:
        return False
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.num_processes}"]
    cmd += ["-m", "stages.variant.train", *sys.argv[1:]]
    log.info("relaunching under torchrun with %d processes", spec.num_processes)
    code = subprocess.run(cmd, check=False).returncode
    if code:
        raise StageError(f"torchrun with {spec.num_processes} processes failed (exit code {code})")
    return True


def main(argv: list[str] | None = None) -> None:
    """Command line: the flags of the train stage's cmd in dvc.yaml (relaunched under torchrun for DDP)."""
    cli.main(STAGE, run, argv, launch=_relaunch)


if __name__ == "__main__":
    cli.run_main(main)
