"""Tests of the export stage on a tiny random Llama (2 layers, hidden 64, vocab 300) and an untrained adapter.

The adapter is made without training: ``LoraConfig(init_lora_weights=False)`` gives random A and B, so the merge
changes every targeted weight (with the default init B = 0 and a merge would change nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stages.core import io as _io
from stages.core import params as _params
from stages.core.io import StageError
from stages.variant import export
from tests.stages._tiny import tiny_llama, word_tokenizer

NO_PARAMS = _params.of({})  # the export stage reads no params

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 300
LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
IDS = [[1, 10, 11, 12, 13, 14, 15, 16], [1, 200, 7, 42, 299, 3, 4, 5]]  # (B=2, T=8)


def _base(out: Path, dtype: str) -> None:
    """A tiny LlamaForCausalLM saved in `dtype` with a word-level tokenizer (as test_train's fixture)."""
    tiny_llama(out, word_tokenizer(VOCAB), max_positions=64, dtype=dtype)


def _adapter(base: Path, out: Path) -> None:
    """A rank-4 LoRA adapter with random A and B on every linear layer, saved with the tokenizer (as train does)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, cfg).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    (out / "steep_train.json").write_text(json.dumps({"quantization": "nf4_4bit"}))  # the part export reads


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """models/chat/{base,adapter} in float32, and a bfloat16 base with its own adapter."""
    root = tmp_path_factory.mktemp("export")
    for variant, dtype in (("chat", "float32"), ("bf16", "bfloat16")):
        _base(root / variant / "base", dtype)
        _adapter(root / variant / "base", root / variant / "adapter")
    return {"root": root, "base": root / "chat" / "base", "adapter": root / "chat" / "adapter"}


def _logits(model: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits.float()  # (B=2, T=8, V=300)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_merged_model_matches_peft_on_unquantized_base(tiny: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    stats = export.run(NO_PARAMS, inputs={"base": tiny["base"], "adapter": tiny["adapter"]}, outputs={"out": out})
    # 2 layers x 7 linear layers (q, k, v, o, gate, up, down); lm_head is never a LoRA target.
    assert stats["merged_modules"] == 14 and stats["dtype"] == "float32"
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", export.RECORD} <= names
    assert not [n for n in names if n.startswith("adapter_") or n.endswith((".bin", ".pt"))]

    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny["base"])
    plain = _logits(base)
    peft = _logits(PeftModel.from_pretrained(base, tiny["adapter"]))
    got = _logits(merged)
    assert (peft - plain).abs().max() > 1e-2  # the adapter does change the outputs
    assert torch.allclose(got, peft, atol=1e-4, rtol=0), (got - peft).abs().max()
    assert AutoTokenizer.from_pretrained(out)("<s> t10 t11", add_special_tokens=False)["input_ids"] == [1, 10, 11]

    rec = json.loads((out / export.RECORD).read_text())
    assert rec["adapter_sha256"] == _io.sha256_file(tiny["adapter"] / "adapter_model.safetensors")
    assert rec["base_sha256"] == {"model.safetensors": _io.sha256_file(tiny["base"] / "model.safetensors")}
    assert rec["lora"] == {"r": 4, "lora_alpha": 8, "target_modules": LINEAR} and rec["versions"]["peft"]
    assert rec["trained_quantization"] == "nf4_4bit" and "nf4_4bit base" in rec["note"]
    text = "".join(p.read_text(errors="ignore") for p in out.iterdir() if p.suffix == ".json")
    assert str(tmp_path) not in text and str(tiny["root"]) not in text  # no absolute paths


def test_merge_vs_4bit_base_differs_by_the_quantization_error(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The QLoRA caveat, measured: merged (unquantized) vs PeftModel on the 4-bit base the adapter trained on."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = tmp_path / "merged"
    export.run(NO_PARAMS, inputs={"base": tiny["base"], "adapter": tiny["adapter"]}, outputs={"out": out})
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    base4 = AutoModelForCausalLM.from_pretrained(tiny["base"], quantization_config=q, device_map={"": "cpu"})
    quant_only = (_logits(base4) - _logits(AutoModelForCausalLM.from_pretrained(tiny["base"]))).abs().max().item()
    merged = _logits(AutoModelForCausalLM.from_pretrained(out))
    diff = (merged - _logits(PeftModel.from_pretrained(base4, tiny["adapter"]))).abs().max().item()
    print(f"max |logit diff|: merged vs 4-bit+adapter {diff:.4f}, 4-bit vs unquantized base {quant_only:.4f}")
    assert 1e-4 < diff < 0.2 and quant_only < 0.2


def test_saved_dtype_is_kept_and_outputs_are_byte_identical(tiny: dict[str, Path], tmp_path: Path) -> None:
    from safetensors import safe_open

    bf16 = tiny["root"] / "bf16"
    first, second = tmp_path / "a" / "merged", tmp_path / "b" / "merged"
    for out in (first, second):
        stats = export.run(NO_PARAMS, inputs={"base": bf16 / "base", "adapter": bf16 / "adapter"}, outputs={"out": out})
    assert stats["dtype"] == "bfloat16"
    with safe_open(first / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}  # noqa: SIM118
    assert _files(first) == _files(second)
    assert json.loads((first / export.RECORD).read_text())["dtype"] == "bfloat16"
    assert not list(first.parent.glob(".merged.tmp-*"))


def test_command_line(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    cmd = [
        sys.executable,
        "-m",
        "stages.variant.export",
        "--base",
        str(tiny["base"]),
        "--adapter",
        str(tiny["adapter"]),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and "14 merged modules" in done.stderr
    bad = subprocess.run(
        [*cmd[:-1], str(tmp_path / "nope"), "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr


def test_missing_inputs_name_the_path_and_the_fix(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = {"out": tmp_path / "merged"}
    missing = tmp_path / "models" / "chat" / "adapter"
    with pytest.raises(StageError, match=r"adapter does not exist; .*Run `dvc repro train@chat` first"):
        export.run(NO_PARAMS, inputs={"base": tiny["base"], "adapter": missing}, outputs=out)
    missing.mkdir(parents=True)
    (missing / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(StageError, match=r"adapter: missing \['adapter_config.json'\].*dvc repro train@chat"):
        export.run(NO_PARAMS, inputs={"base": tiny["base"], "adapter": missing}, outputs=out)
    with pytest.raises(StageError, match=r"nope: no base checkpoint .*`dvc repro models@chat` first"):
        export.run(NO_PARAMS, inputs={"base": tmp_path / "nope", "adapter": tiny["adapter"]}, outputs=out)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(StageError, match=r"no \*\.safetensors weights \(found \['config.json', 'pytorch_model.bin'\]"):
        export.run(NO_PARAMS, inputs={"base": pickled, "adapter": tiny["adapter"]}, outputs=out)
    assert not out["out"].exists() and not list(tmp_path.glob(".merged.tmp-*"))
