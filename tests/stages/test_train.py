"""Tests of the train stage on a tiny random Llama (2 layers, hidden 64, vocab 300) and a memorizable dataset.

The data: each row counts up by one from a random start (``t<s> t<s+1> ...``); the first 4 tokens are the prompt
(labels -100). A 2-layer model with a rank-8 adapter learns "next = previous + 1" within a few dozen steps.
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
from stages.core import params as core_params
from stages.core.io import StageError
from stages.variant import lm as variant_lm
from stages.variant import train, training
from tests.stages._tiny import tiny_llama, word_tokenizer, write_params


def load_spec(path: Path, variant: str) -> tuple[int, Any]:
    """``common.seed`` and ``train.<variant>`` as the train stage loads them."""
    params = core_params.load(path, train.STAGE.keys(variant))
    return params.common.seed, core_params.get(params, f"train.{variant}")


ROOT = Path(__file__).resolve().parents[2]
VOCAB = 300

SPEC: dict[str, Any] = {
    "quantization": "nf4_4bit",
    "compute_dtype": "float32",
    "lora_rank": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "learning_rate": 0.01,
    "lr_scheduler": "linear",
    "warmup_ratio": 0.0,
    "max_steps": 20,
    "epochs": 0,
    "optimizer": "adamw_torch_fused",
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "per_device_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "log_every_steps": 2,
    "eval_every_steps": 5,
    "save_every_steps": 5,
    "select": "eval_loss",
    "early_stopping_patience": 3,
    "max_checkpoints": 2,
    "use_gradient_checkpointing": False,
    "num_processes": 1,
}


def _rows(starts: range) -> Any:
    from datasets import Dataset

    rows = []
    for s in starts:
        ids = [1] + [3 + (s + i) % 200 for i in range(15)]  # <s> then 15 counting tokens: 16 tokens a row
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * 4 + ids[4:]})
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved tiny LlamaForCausalLM + word-level tokenizer, and a tokenized DatasetDict (67 train / 8 val rows)."""
    from datasets import DatasetDict

    root = tmp_path_factory.mktemp("tiny")
    tiny_llama(root / "model", word_tokenizer(VOCAB), max_positions=64)
    DatasetDict({"train": _rows(range(0, 200, 3)), "validation": _rows(range(1, 200, 25))}).save_to_disk(
        str(root / "data")
    )
    return {"model": root / "model", "data": root / "data"}


def _params(path: Path, **over: Any) -> Path:
    """A params file with train.chat = SPEC changed by `over` (only the chat variant, common.seed the repo's)."""
    return write_params(path, train={"chat": {**SPEC, **over}})


def _cmd(tiny: dict[str, Path], params: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "stages.variant.train", "--params", str(params), "--variant", "chat",
        "--model", str(tiny["model"]), "--data", str(tiny["data"]), "--out", str(out / "adapter"),
        "--checkpoints", str(out / "ckpt"), "--metrics", str(out / "metrics.json"), "--live", str(out / "live"),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(tiny: dict[str, Path], out: Path, **over: Any) -> dict[str, Any]:
    spec = train.TrainSpec.model_validate({**SPEC, **over})
    return train.run(
        core_params.of({"common.seed": 1234, "train.chat": spec}),
        variant="chat",
        inputs={"model": tiny["model"], "data": tiny["data"]},
        outputs={"out": out / "adapter", "live": out / "live"},
        checkpoints=out / "ckpt",
    )


# --- training -----------------------------------------------------------------


def test_qlora_trains_keeps_best_adapter_and_reloads_on_4bit_base(tiny: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    m = _run(tiny, tmp_path)
    assert m["eval_loss"] < m["first_eval_loss"] - 0.1, m  # 20 steps: ~5.56 -> ~5.29
    assert m["steps"] == 20 and m["best_step"] == 20 and not m["stopped_early"] and not m["resumed"]
    assert m["tokens_per_s"] > 0 and m["peak_memory_mb"] > 0 and m["world_size"] == 1
    adapter = tmp_path / "adapter"
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "steep_train.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt"))] and "model.safetensors" not in names
    assert json.loads((adapter / "steep_train.json").read_text())["deterministic"] is True
    # no load-time state (HF_HUB_OFFLINE is set in tests): the adapter's bytes do not depend on the environment
    assert not set(_io.LOAD_STATE_KEYS) & set(json.loads((adapter / "tokenizer_config.json").read_text()))
    assert not (tmp_path / "ckpt").exists()  # checkpoints removed after success
    # dvclive: one row per logged step, train and eval curves, tokens/s and memory
    plots = tmp_path / "live" / "plots" / "metrics"
    assert len((plots / "train" / "loss.tsv").read_text().splitlines()) == 1 + 10
    assert len((plots / "eval" / "loss.tsv").read_text().splitlines()) == 1 + 4
    assert (plots / "train" / "tokens_per_s.tsv").exists() and (plots / "train" / "memory_mb.tsv").exists()

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    base = AutoModelForCausalLM.from_pretrained(tiny["model"], quantization_config=q, device_map={"": "cpu"})
    model = PeftModel.from_pretrained(base, adapter)
    tok = AutoTokenizer.from_pretrained(adapter)
    ids = tok("<s> t10 t11 t12", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 8)


def test_plain_lora_without_quantization(tiny: dict[str, Path], tmp_path: Path) -> None:
    m = _run(tiny, tmp_path, quantization="none", max_steps=10, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
    assert m["steps"] == 10 and m["eval_loss"] < m["first_eval_loss"]
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"] and cfg["r"] == 8


def test_batch_keeps_precomputed_labels(tiny: dict[str, Path]) -> None:
    """trl's collator pads what it is given: labels are not rebuilt from input_ids, prompts stay -100."""
    from datasets import load_from_disk
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [dict(r) for r in load_from_disk(str(tiny["data"]))["train"].select(range(2))]
    rows[1] = {k: v[:10] for k, v in rows[1].items()}  # shorter row -> padded
    batch = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    assert batch["labels"][0, :4].tolist() == [-100] * 4 and batch["labels"][0, 4:].tolist() == rows[0]["input_ids"][4:]
    assert batch["labels"][1, 10:].tolist() == [-100] * 6 and batch["attention_mask"][1].sum() == 10


def test_epochs_optimizer_weight_decay_and_clipping(tiny: dict[str, Path], tmp_path: Path) -> None:
    """max_steps 0: `epochs` passes over the train split (67 rows, batch 8: 9 steps a pass); 8-bit AdamW on CPU."""
    knobs = {"max_steps": 0, "epochs": 2, "optimizer": "adamw_8bit", "weight_decay": 0.1, "max_grad_norm": 0.5}
    spec = train.TrainSpec.model_validate({**SPEC, **knobs})
    args = train._setup_args(spec, 0, tmp_path / "ckpt", "cpu", 1, packed=False)
    assert (args.max_steps, args.num_train_epochs, args.optim) == (-1, 2, "adamw_8bit")
    assert (args.weight_decay, args.max_grad_norm, args.padding_free) == (0.1, 0.5, False)
    m = _run(tiny, tmp_path, quantization="none", eval_every_steps=3, save_every_steps=9, **knobs)
    assert m["steps"] == 18 and not m["stopped_early"] and m["eval_loss"] < m["first_eval_loss"], m
    # The demo's defaults are transformers': fused AdamW, no weight decay, clipping at 1.
    default = train._setup_args(train.TrainSpec.model_validate(SPEC), 0, tmp_path, "cpu", 1, packed=False)
    assert (default.optim, default.weight_decay, default.max_grad_norm, default.max_steps) == (
        "adamw_torch_fused",
        0.0,
        1.0,
        20,
    )


def _packed(rows: Any, per_row: int) -> Any:
    """`rows` packed `per_row` at a time, as the tokenize stage writes them (position ids restart, seq_lengths)."""
    from datasets import Dataset

    out = []
    for i in range(0, len(rows), per_row):
        group = [rows[j] for j in range(i, min(i + per_row, len(rows)))]
        out.append(
            {
                "input_ids": [t for r in group for t in r["input_ids"]],
                "attention_mask": [1 for r in group for _ in r["input_ids"]],
                "labels": [t for r in group for t in r["labels"]],
                "position_ids": [k for r in group for k in range(len(r["input_ids"]))],
                "seq_lengths": [len(r["input_ids"]) for r in group],
            }
        )
    return Dataset.from_list(out)


def test_packed_rows_train_padding_free_each_example_apart(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A packed row's loss is its examples' loss as if each were alone: no example attends to its neighbour.

    Only without a KV cache: with one (``use_cache``, on by default even in training), transformers 5 skips the
    block-diagonal mask, which is why the stage turns the cache off.
    """
    import torch
    from datasets import DatasetDict, load_from_disk
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    data = load_from_disk(str(tiny["data"]))
    rows = [dict(r) for r in data["train"].select(range(3))]
    packed = _packed(rows, 3)
    assert train.is_packed(DatasetDict({"train": packed})) and not train.is_packed(data)
    model = AutoModelForCausalLM.from_pretrained(tiny["model"]).eval()

    def loss_sum(batch: dict[str, Any]) -> float:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        keep = labels != -100
        return float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))

    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    together = loss_sum(collate([dict(packed[0])]))
    apart = sum(loss_sum(DataCollatorForLanguageModeling(pad_token_id=0)([r])) for r in rows)
    assert abs(together - apart) < 1e-3  # float32 sums of ~45 token losses (~206)
    # Without padding-free, the packed row is one long sequence: the examples see each other and the loss differs.
    plain = DataCollatorForLanguageModeling(pad_token_id=0)([{k: packed[0][k] for k in ("input_ids", "labels")}])
    assert abs(loss_sum(plain) - apart) > 0.02  # a random model: ~0.056

    # The stage trains on packed data padding-free (67 rows, 3 a row: 23 packed rows).
    root = tmp_path / "packed"
    DatasetDict({"train": _packed(data["train"], 3), "validation": data["validation"]}).save_to_disk(str(root))
    m = _run({"model": tiny["model"], "data": root}, tmp_path, quantization="none", max_steps=10)
    assert m["steps"] == 10 and m["eval_loss"] < m["first_eval_loss"], m


# --- resume (kills and full disks: test_train_resume.py) ------------------------


def test_checkpoints_of_other_params_are_not_resumed(tiny: dict[str, Path], tmp_path: Path) -> None:
    stale = tmp_path / "ckpt" / "checkpoint-5"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")
    (tmp_path / "ckpt" / training.RUN_RECORD).write_text(json.dumps({"fingerprint": "other"}))
    m = _run(tiny, tmp_path, max_steps=5)
    assert not m["resumed"] and m["steps"] == 5


# --- DDP ----------------------------------------------------------------------


def test_ddp_two_processes_on_cpu(tiny: dict[str, Path], tmp_path: Path) -> None:
    params = _params(tmp_path / "params.yaml", num_processes=2, max_steps=10)
    done = subprocess.run(
        _cmd(tiny, params, tmp_path), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 10 and m["eval_loss"] < m["first_eval_loss"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert done.stderr.count("world size 2") == 2  # one line per rank


# --- params -------------------------------------------------------------------


def test_params_errors_list_every_problem(tmp_path: Path) -> None:
    bad = {**SPEC, "quantization": "fp4", "lora_rank": 0, "typo": 1, "save_every_steps": 7}
    path = write_params(tmp_path / "params.yaml", train={"chat": bad})
    with pytest.raises(StageError) as err:
        load_spec(path, "chat")
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "train.chat.quantization:" in msg and "'nf4_4bit'" in msg and "'fp4'" in msg
    assert "train.chat.lora_rank:" in msg and "train.chat.typo: unknown key (value 1)" in msg
    for both in ({"max_steps": 0, "epochs": 0}, {"max_steps": 10, "epochs": 2}):
        write_params(path, train={"chat": {**SPEC, **both}})
        with pytest.raises(StageError, match=r"set exactly one of max_steps \(\d+\) and epochs \(\d\.0\), the other 0"):
            load_spec(path, "chat")
    write_params(path, train={"chat": {**SPEC, "optimizer": "adam", "weight_decay": -1, "max_grad_norm": -0.5}})
    with pytest.raises(StageError) as err:
        load_spec(path, "chat")
    msg = str(err.value)
    assert "3 problem(s)" in msg and "train.chat.optimizer: Input should be 'adamw_torch_fused', " in msg
    assert "'paged_adamw_8bit'" in msg and "(got 'adam')" in msg
    assert "train.chat.weight_decay: Input should be greater than or equal to 0 (got -1)" in msg
    assert "train.chat.max_grad_norm: Input should be greater than or equal to 0 (got -0.5)" in msg
    write_params(path, train={"chat": {**SPEC, "save_every_steps": 7}})
    with pytest.raises(StageError, match=r"save_every_steps \(7\) must be a multiple of eval_every_steps \(5\)"):
        load_spec(path, "chat")
    # The whole file is validated before the variant is looked up: an undeclared one needs a valid file to show.
    write_params(path, train={"chat": SPEC})
    with pytest.raises(StageError, match=r"no 'base' in train \(declared: \['chat'\]\)"):
        load_spec(path, "base")
    assert train.STAGE.keys("chat") == ["common.seed", "train.chat"]


def test_int8_on_cpu_and_bad_data_are_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    spec = train.TrainSpec.model_validate({**SPEC, "quantization": "int8"})
    with pytest.raises(StageError, match="8-bit training needs CUDA"):
        variant_lm.load_base(tiny["model"], spec, "cpu", 0)
    with pytest.raises(StageError, match="expected a DatasetDict saved with save_to_disk"):
        train.load_data(tmp_path)
