"""Static token embeddings distilled from a sentence-transformers model, and sentence vectors from them.

The recipe is model2vec's ``distill`` (0.10, without its ``[distill]`` extra, which would pin older
transformers): every token of the model's own tokenizer (``[unusedN]`` placeholders left out) is run through
the transformer alone, as ``[CLS] token [SEP]``, and the mean of the three output vectors is that token's
vector (sentence-transformers' mean pooling of that one-token input); PCA (scikit-learn, ``svd_solver="full"``,
float64) takes the table to ``static_dims`` dimensions; each row is then weighted as model2vec does (SIF
with coefficient 1e-4 on a Zipf estimate of the token's probability from its rank in the vocabulary:
``w = 1e-4 / (1e-4 + p)``, ``p ∝ 1 / (rank + 1)``), which shrinks the frequent tokens.

The table is stored as integers: each entry is rounded to a multiple of ``max|table| / 2**12``
(:data:`QUANT_BITS`) and kept as int16. That makes inference exact: a text's vector is the *sum* of its
token rows (the mean's direction; only the direction survives normalization), computed as integer-valued
float64 products of a sparse count matrix with the table; with at most ``max_tokens`` ≤ 512 rows of
|entry| ≤ 2**12 (:data:`MAX_TOKENS`), every partial sum, square and sum of squares is an integer below 2**53,
so the sums and the norm's sum of squares are exact in any order, on any CPU and in any batch.
:mod:`stages.curate.embed` then normalizes and snaps the sums as it does the transformer's.

The distillation itself runs in float64 (like the transformer embeddings), where two CPUs' kernels differ by
~1e-15 while the integer grid's step is ~2.4e-4 of the largest entry; two kernels round an entry differently
only when it lies within ~1e-15 of a rounding midpoint (checked: identical table bytes under
``ATEN_CPU_CAPABILITY=default`` and native kernels, tests/stages/test_embed.py on a truncated vocabulary).

The distilled model lives in the embedding cache (``<cache>/static/<key>/``: ``vectors.safetensors`` with
``embeddings`` (V, D) int16 and ``token_ids`` (V,) int64, plus ``model.json``), keyed on the source
model's files, the dims, the vocabulary limit, this module's source and the versions of the libraries that
distill (:data:`LIBRARIES`); ``model.json`` records the sha256 of each file, checked before the table is used
(:func:`table_problem`): a damaged table is moved aside (``<key>.corrupt-<n>``) and distilled again. It is
computed on first use (20 s
to 2 min for MiniLM's 30,522 tokens on two cores, by load) and written to a temporary folder that is renamed
into place. A copy goes to the user's cache (``$STEEP_CACHE_HOME``, else ``$XDG_CACHE_HOME/steep``, else
``~/.cache/steep``; ``static/<key>/``), where another project or a fresh embedding cache of the same model
finds it instead of distilling again, as a Hub model is downloaded once per machine. The key names the
content, so a table from there is the table this machine would distill.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from stages.core import cache as _cache
from stages.core.io import StageError, feed, temp_dir

log = logging.getLogger("steep.embed")

# Table entries are integers in [-2**QUANT_BITS, 2**QUANT_BITS] (see the module docstring).
QUANT_BITS = 12
# model2vec's defaults: the SIF coefficient and the tokens left out of the vocabulary.
SIF_COEFFICIENT = 1e-4
REMOVE_TOKENS = re.compile(r"\[unused\d+\]")
# Most tokens one text contributes: a sum's entry stays below 2**21, its square below 2**42, and a sum of
# squares over at most 1024 dims (common.embedding.static_dims) below 2**52: all exact in float64.
MAX_TOKENS = 512
# Token inputs run through the transformer at once while distilling: (B, 3) ids.
DISTILL_BATCH = 512


# The libraries that distill a table (their versions are part of its key).
LIBRARIES = (
    "model2vec", "numpy", "scikit-learn", "scipy", "sentence-transformers", "tokenizers", "torch", "transformers",
)  # fmt: skip
# The files of a table folder whose sha256 model.json records.
TABLE_FILES = ("tokenizer.json", "vectors.safetensors")


def table_origin() -> _cache.Origin:
    """What distills a table: this module's code (its AST: a docstring edit keeps the tables) and the versions of
    :data:`LIBRARIES`."""
    return _cache.origin(("ast:stages.curate.static_embed",), LIBRARIES)


# The files of a model directory that determine the distilled table.
SOURCE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@dataclass(frozen=True)
class StaticModel:
    """A distilled table: `embeddings` (V, D) integer-valued float64, row i the vector of token `token_ids[i]`."""

    key: str
    embeddings: np.ndarray
    row_of: np.ndarray  # (tokenizer vocab size,) int64: row of each token id, -1 for tokens left out
    tokenizer_path: str


def source_fingerprint(model_dir: str) -> str:
    """sha256 of the model's weights and tokenizer files (what the distilled table is a function of)."""
    d = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(d.glob("*.safetensors")) + [d / n for n in SOURCE_FILES if (d / n).exists()]:
        h.update(f.name.encode() + b"\0")
        feed(h, f)
    return h.hexdigest()


def static_key(model_dir: str, dims: int, max_vocab: int | None) -> str:
    """The cache key of a distilled table: source files, distill params, this module's code and the libraries'
    versions (:func:`table_origin`)."""
    parts = [source_fingerprint(model_dir), str(dims), str(max_vocab), str(SIF_COEFFICIENT), str(QUANT_BITS)]
    parts.append(_cache.digest(table_origin()))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _vocabulary(tokenizer, max_vocab: int | None) -> list[int]:
    """Token ids to distill, in id order (model2vec's rank order): all but ``[unusedN]``, the first `max_vocab`."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    ids = sorted(i for tok, i in vocab.items() if not REMOVE_TOKENS.fullmatch(tok))
    return ids[:max_vocab] if max_vocab else ids


def _token_vectors(model_dir: str, ids: list[int], bos: int, eos: int) -> np.ndarray:
    """(V, H) float64: the mean of the transformer's outputs for ``[bos, id, eos]``, per token id."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float64).eval()
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float64)
    start = time.monotonic()
    with torch.inference_mode():
        for lo in range(0, len(ids), DISTILL_BATCH):
            chunk = torch.tensor(ids[lo : lo + DISTILL_BATCH], dtype=torch.long)
            inputs = torch.stack([torch.full_like(chunk, bos), chunk, torch.full_like(chunk, eos)], dim=1)  # (B, 3)
            hidden = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).last_hidden_state  # (B, 3, H)
            out[lo : lo + len(chunk)] = hidden.mean(dim=1).numpy()
            if (lo // DISTILL_BATCH) % 10 == 9 or lo + DISTILL_BATCH >= len(ids):
                done = min(lo + DISTILL_BATCH, len(ids))
                log.info("distilling static embeddings: %d/%d tokens, %.0f s", done, len(ids), time.monotonic() - start)
    return out


def distill(model_dir: str, dims: int, max_vocab: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distill `model_dir`'s tokenizer vocabulary: ((V, dims) int16 table, (V,) int64 token ids).

    Args:
        model_dir: a local sentence-transformers (BERT-style) model directory with a ``tokenizer.json``.
        dims: PCA dimensions of the table (at most the model's hidden size).
        max_vocab: distill only the first `max_vocab` token ids (a quick table for tests); None: all.
    """
    from sklearn.decomposition import PCA
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    ids = _vocabulary(tokenizer, max_vocab)
    bos, eos = (tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]"))
    if bos is None or eos is None:
        raise StageError(
            f"static embeddings: {model_dir}'s tokenizer has no [CLS]/[SEP] tokens (expected a BERT-style model)"
        )
    if dims >= len(ids):
        raise StageError(f"common.embedding.static_dims: {dims} is not below the {len(ids)} tokens distilled")
    vectors = _token_vectors(model_dir, ids, bos, eos)  # (V, H)
    if dims > vectors.shape[1]:
        raise StageError(f"common.embedding.static_dims: {dims} exceeds the model's hidden size {vectors.shape[1]}")
    table = PCA(n_components=dims, svd_solver="full").fit_transform(vectors)  # (V, dims) float64
    inv_rank = 1.0 / np.arange(2, len(ids) + 2, dtype=np.float64)
    proba = inv_rank / inv_rank.sum()
    table *= (SIF_COEFFICIENT / (SIF_COEFFICIENT + proba))[:, None]
    quantized = np.rint(table / np.abs(table).max() * 2.0**QUANT_BITS).astype(np.int16)
    return quantized, np.asarray(ids, dtype=np.int64)


def user_tables_dir() -> Path:
    """The user's folder of distilled tables, shared by every project on the machine (module docstring)."""
    home = os.environ.get("STEEP_CACHE_HOME")
    if not home:
        home = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "steep")
    return Path(home) / "static"


def _place(src: Path, final: Path) -> None:
    """Copy the table folder `src` to `final` through a temporary folder renamed into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(final.parent, final.name)  # a killed copy's leftovers there go first
    for f in src.iterdir():
        shutil.copyfile(f, tmp / f.name)
    try:
        tmp.rename(final)
    except OSError:  # another process put the same table there first: keep theirs (same key, same content)
        shutil.rmtree(tmp, ignore_errors=True)


def table_problem(folder: Path) -> str | None:
    """What is wrong with the table folder `folder` (None: its model.json reads and every file has the sha256 it
    records)."""
    try:
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"model.json unreadable or without checksums ({type(e).__name__}: {e})"
    for name in TABLE_FILES:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        h = hashlib.sha256()
        feed(h, path)
        if files.get(name) != h.hexdigest():
            return f"{name} does not have the sha256 model.json records"
    return None


def _checked(folder: Path) -> bool:
    """Whether the table in `folder` is there and whole; a damaged one is moved aside (and False)."""
    if not folder.exists():
        return False
    problem = table_problem(folder)
    if problem is None:
        return True
    _cache.move_aside(folder, problem)
    return False


def ensure_static(model_dir: str, dims: int, cache_dir: str | Path, max_vocab: int | None = None) -> Path:
    """The folder of the distilled table for (`model_dir`, `dims`, `max_vocab`) in `cache_dir`: checked there,
    else copied from the user's tables (:func:`user_tables_dir`) when a whole one is there, else distilled (and
    copied there). A damaged table on the way is moved aside with a warning."""
    from safetensors.numpy import save_file

    key = static_key(model_dir, dims, max_vocab)
    final = Path(cache_dir) / "static" / key
    if _checked(final):
        return final
    shared = user_tables_dir() / key
    if _checked(shared):
        log.info("static embeddings %s: the table distilled before, from %s", key, shared.parent)
        _place(shared, final)
        if _checked(final):
            return final
    log.info("static embeddings %s: distilling %s to %d dims (once per model and params)", key, model_dir, dims)
    table, ids = distill(model_dir, dims, max_vocab)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(final.parent, key)  # a killed distillation's half-made folder there goes first
    save_file({"embeddings": table, "token_ids": ids}, str(tmp / "vectors.safetensors"))
    shutil.copyfile(Path(model_dir) / "tokenizer.json", tmp / "tokenizer.json")
    files = {}
    for name in TABLE_FILES:
        h = hashlib.sha256()
        feed(h, tmp / name)
        files[name] = h.hexdigest()
    meta = {
        "source_fingerprint": source_fingerprint(model_dir),
        "dims": dims,
        "vocab": len(ids),
        "max_vocab": max_vocab,
        "sif_coefficient": SIF_COEFFICIENT,
        "quant_bits": QUANT_BITS,
        "origin": table_origin(),
        "files": files,
    }
    (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    try:
        tmp.rename(final)
    except OSError:  # another process put the same table there first: keep theirs (same key, same content)
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        _place(final, shared)
    except OSError as e:  # a read-only home: every new cache distills again
        log.warning("static embeddings %s: could not keep a copy in %s (%s)", key, shared.parent, e)
    return final


@lru_cache(maxsize=2)
def load_static(folder: str) -> StaticModel:
    """The distilled model in `folder` (from :func:`ensure_static`, which checked its files' sha256)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    meta = json.loads((Path(folder) / "model.json").read_text(encoding="utf-8"))
    tensors = load_file(str(Path(folder) / "vectors.safetensors"))
    ids, table = tensors["token_ids"], tensors["embeddings"]
    shapes = (table.dtype, table.shape, ids.dtype, ids.shape)
    if shapes != (np.int16, (meta["vocab"], meta["dims"]), np.int64, (meta["vocab"],)):
        raise StageError(
            f"static table {folder}: embeddings {table.dtype} {table.shape}, token_ids {ids.dtype} {ids.shape}, "
            f"expected int16 ({meta['vocab']}, {meta['dims']}) and int64 ({meta['vocab']},) as model.json says; "
            "delete the folder and rerun to distill it again"
        )
    tokenizer_path = str(Path(folder) / "tokenizer.json")
    size = Tokenizer.from_file(tokenizer_path).get_vocab_size(with_added_tokens=True)
    row_of = np.full(max(size, int(ids.max()) + 1), -1, dtype=np.int64)
    row_of[ids] = np.arange(len(ids))
    unk = Tokenizer.from_file(tokenizer_path).token_to_id("[UNK]")
    if unk is not None:
        row_of[unk] = -1  # model2vec drops unknown tokens: a character the vocabulary lacks adds nothing
    return StaticModel(Path(folder).name, table.astype(np.float64), row_of, tokenizer_path)


@lru_cache(maxsize=2)
def _tokenizer(path: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.no_truncation()
    return tok


def token_sums(model: StaticModel, texts: list[str], max_tokens: int) -> np.ndarray:
    """(N, D) float64 sums of the table rows of each text's first `max_tokens` tokens (no special tokens).

    Every entry is an exact integer (module docstring); a text with no known token gets a zero row.
    """
    from scipy.sparse import csr_matrix

    if max_tokens > MAX_TOKENS:
        raise StageError(f"common.embedding.max_tokens: {max_tokens} > {MAX_TOKENS}, the most a static sum keeps exact")
    encoded = _tokenizer(model.tokenizer_path).encode_batch(texts, add_special_tokens=False)
    rows = [model.row_of[np.asarray(e.ids[:max_tokens], dtype=np.int64)] for e in encoded]
    rows = [r[r >= 0] for r in rows]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    cols = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    counts = csr_matrix((np.ones(len(cols)), cols, indptr), shape=(len(texts), len(model.embeddings)))
    return np.asarray(counts @ model.embeddings, dtype=np.float64)
