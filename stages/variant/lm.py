"""What the per-variant stages and the probe share about a variant's model: its device, tokenizer, quantized
base, and the templated rows (the template stage's output, the tokenize stage's input).

A shared module, not a stage: the stages of ``stages/variant`` and ``stages/probe`` import it, so that no
stage module imports another and an edit to one stage's code reruns that stage only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from stages.core.io import StageError, read_parquet

# The template stage's rows: a record's text as segments, each trained on or not.
SEGMENT_TYPE = pa.struct([("text", pa.string()), ("train", pa.bool_())])
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("segments", pa.list_(SEGMENT_TYPE)),
        ("meta", pa.string()),
    ]
)


def device() -> str:
    """``cuda`` where a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(model_dir: Path, spec: Any, device: str, local_rank: int) -> Any:
    """The base model: 4-bit NF4 with double quantization, 8-bit, or unquantized, in the compute dtype.

    `spec` is a ``train.<variant>`` section, or anything with its ``quantization`` and ``compute_dtype``.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = getattr(torch, spec.compute_dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False}
    if spec.quantization == "nf4_4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    elif spec.quantization == "int8":
        if device != "cuda":
            raise StageError(
                "train quantization 'int8': bitsandbytes 8-bit training needs CUDA; on CPU use 'nf4_4bit' or 'none'"
            )
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    if spec.quantization != "none":
        # bitsandbytes places the quantized weights at load time: one device per process.
        kwargs["device_map"] = {"": local_rank if device == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    keep_4bit_layout(model)  # train, baseline and probe: the same 4-bit weights on every CPU
    return model


def keep_4bit_layout(model: Any) -> None:
    """Keep bitsandbytes' 4-bit weights in the layout they were quantized in, for the whole run.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit layer the first time it runs in eval mode
    without gradients (every evaluation), rounding its block scales to bfloat16, and quantizes the scales again
    whenever the model's state dict is read (every checkpoint save). The base model would then change, a little, at
    every evaluation and save: a resumed run, which quantizes afresh, would train on other weights, and a machine
    without AVX512-BF16 would too. Off, every forward pass dequantizes the weights as quantized at load.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer of a materialized checkpoint (no repository code runs)."""
    from transformers import AutoTokenizer

    if not (Path(model_dir) / "tokenizer_config.json").is_file():
        raise StageError(f"{model_dir}: no tokenizer_config.json; run `dvc repro models` first")
    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)


def leading_specials(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before any text (e.g. ``[<bos>]``), found by tokenizing with and without them."""
    probe = "steep"
    with_ = tokenizer(probe, add_special_tokens=True)["input_ids"]
    without = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(with_) - len(without) + 1):
        if with_[start : start + len(without)] == without:
            return list(with_[:start])
    return []


def read_templated(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by this stage (segments as lists of {text, train} dicts)."""
    path = Path(path)
    table = read_parquet(path, SCHEMA.names, "templated rows", "rerun `dvc repro template`", "not a templated file")
    try:
        return table.cast(SCHEMA).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise StageError(f"{path}: columns of the wrong type ({e}); expected {SCHEMA}") from None
