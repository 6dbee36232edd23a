"""Export (optional): merge a variant's trained LoRA adapter into its base model and save a standalone checkpoint.

Inputs: ``--base`` (``models/<variant>/base``, the safetensors checkpoint of the models stage) and ``--adapter``
    (``models/<variant>/adapter``, the train stage's ``adapter_model.safetensors`` + ``adapter_config.json`` +
    tokenizer). No params.
Outputs: ``--out`` (``models/<variant>/merged``): a checkpoint that ``AutoModelForCausalLM.from_pretrained(dir)``
    and ``AutoTokenizer.from_pretrained(dir)`` load with no other argument and no peft: ``model.safetensors``
    (sharded for large models), ``config.json``, ``generation_config.json``, the adapter's tokenizer files, and
    ``steep_export.json`` (sha256 of the adapter weights and of every base weight file, the dtype, the LoRA rank /
    alpha / target modules, the quantization the adapter was trained on (from the adapter's ``steep_train.json``),
    library versions; no timestamps, no paths). Same inputs, same bytes.
Run: ``python -m stages.variant.export --base models/chat/base --adapter models/chat/adapter --out models/chat/merged``
    (after ``dvc repro train@chat``).

How. The base is loaded unquantized in the dtype it was saved in (``dtype="auto"``; bf16 for the embedded
models), safetensors only, no repository code (``trust_remote_code=False``); peft applies the adapter and
``merge_and_unload()`` folds ``W + (alpha / r) * B @ A`` into each targeted linear weight, rounded to that dtype.

QLoRA caveat. The adapter was trained against the 4-bit NF4 base (``train.<variant>.quantization: nf4_4bit``): it
learned to correct the NF4-rounded weights, not the original ones, so merged into the unquantized base it meets
slightly different weights and the merged model's outputs differ slightly from what was trained and evaluated (the
standard QLoRA trade-off). Measured on the tests' tiny random Llama (2 layers, hidden 64, vocab 300, float32, rank-4
adapter with random A and B, 2 x 8 tokens): merged vs PeftModel on the 4-bit base: max |logit diff| 0.05 (mean
0.007) on logits of max magnitude 0.6 (std 0.15), greedy next token the same at all 16 positions; 4-bit vs
unquantized base alone: 0.07, so the gap is the base's NF4 rounding, not the merge (merged vs PeftModel on the
unquantized base: 4e-7, tested to 1e-4). A random tiny model says little about a real one. To serve exactly what was
trained, load the 4-bit base + adapter instead.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any

from stages.core import cli
from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError

log = logging.getLogger("steep.export")

STAGE = cli.Stage(
    params=(),  # reads no params
    inputs={"base": "base checkpoint directory (models/<variant>/base)", "adapter": "adapter directory"},
    outputs={"out": "merged checkpoint directory to write"},
    metrics=False,
)
PARAMS = list(STAGE.params)
RECORD = "steep_export.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
VERSIONS = ("torch", "transformers", "peft", "safetensors", "tokenizers")


def check_inputs(base: Path, adapter: Path) -> tuple[list[Path], dict[str, Any]]:
    """Refuse missing or unusable inputs; return the base's safetensors files and the adapter config.

    Raises:
        StageError: naming the path, what was expected there and the command that makes it.
    """
    variant = adapter.parent.name if adapter.name == "adapter" and adapter.parent.name else "<variant>"
    if not (base / "config.json").is_file():
        raise StageError(
            f"{base}: no base checkpoint (expected config.json + *.safetensors, the models stage's output); "
            f"run `dvc repro models@{variant}` first"
        )
    weights = sorted(base.glob("*.safetensors"))
    if not weights:
        got = sorted(p.name for p in base.iterdir())
        raise StageError(
            f"{base}: no *.safetensors weights (found {got}); only safetensors are loaded. "
            f"Run `dvc repro models@{variant}` to materialize the base checkpoint"
        )
    base_cfg = json.loads((base / "config.json").read_text())
    if "quantization_config" in base_cfg:
        raise StageError(
            f"{base}/config.json: the checkpoint is quantized ({base_cfg['quantization_config'].get('quant_method')}); "
            "a merge needs unquantized weights: point --base at the models stage's output"
        )
    missing = [n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (adapter / n).is_file()]
    if missing:
        where = f"{adapter} does not exist" if not adapter.is_dir() else f"{adapter}: missing {missing}"
        raise StageError(
            f"{where}; expected a LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}, the train stage's output). "
            f"Run `dvc repro train@{variant}` first"
        )
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    if cfg.get("peft_type") != "LORA":
        raise StageError(f"{adapter / ADAPTER_CONFIG}: peft_type {cfg.get('peft_type')!r}; expected 'LORA'")
    return weights, cfg


def _module_names(cfg: dict[str, Any]) -> list[str] | str | None:
    """The adapter's target modules as short names (peft saves "all-linear" expanded to one entry per layer)."""
    targets = cfg.get("target_modules")
    if isinstance(targets, list):
        return sorted({t.rsplit(".", 1)[-1] for t in targets})
    return targets


def run(params: _params.Scoped, *, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    """Merge the adapter into the unquantized base and write the merged checkpoint atomically.

    Args:
        params: none are read (the stage contract's first argument).
        inputs: ``{"base": <base checkpoint dir>, "adapter": <adapter dir>}``.
        outputs: ``{"out": <merged checkpoint dir>}``.

    Returns:
        Stats: parameters (of the merged model), dtype, merged_modules (linear layers that took a LoRA delta).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, adapter_dir, out = Path(inputs["base"]), Path(inputs["adapter"]), Path(outputs["out"])
    weights, cfg = check_inputs(base_dir, adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype="auto", use_safetensors=True, trust_remote_code=False, device_map={"": "cpu"}
    )
    dtype = str(model.dtype).removeprefix("torch.")
    model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    merged_modules = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    if merged_modules == 0:
        raise StageError(f"{adapter_dir}: the adapter's target modules {cfg.get('target_modules')} match no layer")
    model = model.merge_and_unload()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    train_record = adapter_dir / "steep_train.json"  # absent for an adapter made outside the train stage
    trained_q = json.loads(train_record.read_text()).get("quantization") if train_record.is_file() else None
    record = {
        "adapter_sha256": _io.sha256_file(adapter_dir / ADAPTER_WEIGHTS),
        "base_sha256": {p.name: _io.sha256_file(p) for p in weights},
        "dtype": dtype,
        "lora": {"r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha"), "target_modules": _module_names(cfg)},
        "merged_modules": merged_modules,
        "trained_quantization": trained_q,
        "note": (
            f"adapter trained on a {trained_q} base, merged into the unquantized base: outputs differ slightly"
            if trained_q not in (None, "none")
            else None
        ),
        "versions": {p: importlib.metadata.version(p) for p in VERSIONS},
    }
    with torch.no_grad(), _io.atomic_outputs(out) as (tmp,):
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _io.scrub_load_state(tmp)
        _io.write_json(tmp / RECORD, record)
    stats = {"parameters": model.num_parameters(), "dtype": dtype, "merged_modules": merged_modules}
    log.info("wrote %s (%d parameters, %s, %d merged modules)", out, *stats.values())
    return stats


def main(argv: list[str] | None = None) -> None:
    """Command line: --base, --adapter, --out."""
    cli.main(STAGE, run, argv)


if __name__ == "__main__":
    cli.run_main(main)
