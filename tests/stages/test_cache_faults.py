"""The fault catalogue of the caches: each way a cache can be damaged, on the tests' tiny models and data, and what
steep does about it. One table-driven test per cache; every case asserts the outcome: the damage is logged with the
path, the entry computed again, and the stage's output has the bytes of a run from a cold cache.

Also: cache keys hold the versions of the libraries that compute the entries, and ``steep cache verify`` /
``prune`` find and remove what a stage would refuse.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from stages.commands import main as steep
from stages.core import cache as _cache
from stages.core import params as _params
from stages.core import records as _records
from stages.core.params.common import Embedding
from stages.curate import dedup, embed, embed_cache, generation, static_embed, synthesize
from stages.probe import baseline
from stages.probe import cache as probe_cache
from stages.variant import checkpoints
from stages.variant.sources import sha256_file
from tests.stages._tiny import chat_tokenizer, tiny_llama, write_params

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 3000  # the static table of the first 3,000 MiniLM tokens, 64 dims: distilled in seconds
TEXTS = [
    "What is the capital of France?\n\nThe capital of France is Paris.",
    "Explain why the sky looks blue on a clear day.",
    "Write a haiku about the sea.",
    "Paris is the capital of France.",
]


@pytest.fixture(autouse=True)
def own_user_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEEP_CACHE_HOME", str(tmp_path / "user"))


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The static table, distilled once for the module (its user copy in a folder of its own)."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("STEEP_CACHE_HOME", str(tmp_path_factory.mktemp("user")))
        model = embed.resolve_model_dir(_emb("static").model)
        return static_embed.ensure_static(model, 64, tmp_path_factory.mktemp("tables"), VOCAB)


def _with_table(cache: Path, table: Path) -> Path:
    """`cache` and the user's folder holding a copy of the module's table: a distillation saved."""
    for folder in (cache / "static", static_embed.user_tables_dir()):
        shutil.copytree(table, folder / table.name)
    return cache


def _emb(kind: str) -> Embedding:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["common"]["embedding"]
    return Embedding.model_validate({**raw, "kind": kind, "static_dims": 64})


def _vectors(kind: str, cache: Path) -> np.ndarray:
    return embed.embed(TEXTS, _emb(kind), cache, static_max_vocab=VOCAB)


def _sql(cache: Path, statement: str) -> None:
    db = sqlite3.connect(cache / embed_cache.FILE)
    db.execute(statement)
    db.commit()
    db.close()


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _table(cache: Path) -> Path:
    (table,) = (cache / "static").iterdir()
    return table


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


# case: (kind, damage(cache), what the log names, what is left aside)
EMBEDDING_FAULTS: dict[str, tuple[str, Callable[[Path], None], str, str | None]] = {
    # one vector copied over every row: without checksums dedup dropped every record as reference_overlap
    "every vector replaced by one": (
        "static",
        lambda c: _sql(c, "UPDATE vectors SET vec = (SELECT vec FROM vectors ORDER BY key LIMIT 1)"),
        "its sha256 does not match",
        None,
    ),
    "every vector replaced by one (transformer)": (
        "transformer",
        lambda c: _sql(c, "UPDATE vectors SET vec = (SELECT vec FROM vectors ORDER BY key LIMIT 1)"),
        "its sha256 does not match",
        None,
    ),
    # read as 25-dimension vectors before
    "blobs cut to 100 bytes": (
        "static",
        lambda c: _sql(c, "UPDATE vectors SET vec = substr(vec, 1, 100)"),
        "100 bytes for 64 float32 components",
        None,
    ),
    "garbage sqlite file": (
        "static",
        lambda c: (c / embed_cache.FILE).write_bytes(b"not a database " * 500),
        "SQLite cannot read it",
        embed_cache.FILE,
    ),
    "sqlite file cut in half": (
        "static",
        lambda c: _cut(c / embed_cache.FILE, (c / embed_cache.FILE).stat().st_size // 2),
        "SQLite cannot read it",
        embed_cache.FILE,
    ),
    # the project's and the user's copy garbled: distilled again
    "garbled static table": (
        "static",
        lambda c: [
            _garble(t / "vectors.safetensors") for t in (_table(c), static_embed.user_tables_dir() / _table(c).name)
        ],
        "vectors.safetensors does not have the sha256",
        "static",
    ),
    # the project's copy cut short: the user's whole copy is taken
    "static table cut short": (
        "static",
        lambda c: _cut(_table(c) / "vectors.safetensors", 1000),
        "vectors.safetensors does not have the sha256",
        "static",
    ),
    "static table without checksums": (
        "static",
        lambda c: (_table(c) / "model.json").write_text('{"dims": 64}', encoding="utf-8"),
        "without checksums",
        "static",
    ),
}


@pytest.mark.parametrize("case", list(EMBEDDING_FAULTS))
def test_embedding_cache_faults(case: str, tmp_path: Path, table: Path, caplog: pytest.LogCaptureFixture) -> None:
    kind, damage, logged, aside = EMBEDDING_FAULTS[case]
    cache = _with_table(tmp_path / "cache", table)
    cold = _vectors(kind, cache)
    _vectors(kind, cache)  # warm (and the file checked by this process once, as in a stage)
    embed_cache._CHECKED.clear()  # a new process
    damage(cache)
    caplog.set_level(logging.INFO)
    again = _vectors(kind, cache)
    assert again.tobytes() == cold.tobytes()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(logged in w for w in warnings), warnings
    assert any(str(cache) in w or str(static_embed.user_tables_dir()) in w for w in warnings)
    if aside == "static":
        assert list((cache / "static").glob("*.corrupt-1")), "the damaged table is moved aside"
    elif aside is not None:
        assert (cache / f"{aside}.corrupt-1").exists()
    caplog.clear()
    assert _vectors(kind, cache).tobytes() == cold.tobytes()  # and the rebuilt cache serves them
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_dedup_output_is_the_same_after_every_vector_is_replaced(tmp_path: Path) -> None:
    """The stage, not only its vectors: with one vector copied over every row, dedup dropped every record as
    reference_overlap (they all matched the reference); now it writes a cold cache's bytes."""
    ref = tmp_path / "ref.jsonl"
    ref.write_text(json.dumps({"q": "What is the capital of Japan?", "a": "Tokyo."}) + "\n", encoding="utf-8")
    over = {
        "common.embedding.kind": "transformer",
        "dedup.semantic.cosine_threshold": 0.95,
        "dedup.semantic.action": "drop",
        "dedup.references": [{"path": str(ref), "fields": ["q", "a"]}],
    }
    params = _params.load(ROOT / "params.yaml", dedup.PARAMS, overrides=over)
    meta = [{"source_file": "s.jsonl", "row": i + 1, "source_index": 0} for i in range(len(TEXTS))]
    records = [
        _records.make_record(source="s", kind="instruction", instruction=t, output="An answer.", meta=m)
        for t, m in zip(TEXTS, meta, strict=True)
    ]
    _records.write_records(tmp_path / "in.parquet", records)

    def run(tag: str) -> tuple[dict[str, Any], bytes, bytes]:
        out, rejects = tmp_path / f"out_{tag}.parquet", tmp_path / f"rejects_{tag}.parquet"
        m = dedup.run(params, inputs={"in": tmp_path / "in.parquet"}, outputs={"out": out, "rejects": rejects},
                      cache=tmp_path / "cache")  # fmt: skip
        return m, out.read_bytes(), rejects.read_bytes()

    cold = run("cold")
    assert cold[0]["kept"] == len(TEXTS) and cold[0]["dropped_reference_overlap"] == 0
    _sql(tmp_path / "cache", "UPDATE vectors SET vec = (SELECT vec FROM vectors ORDER BY key LIMIT 1)")
    assert run("damaged") == cold


# --- synthesize completions -------------------------------------------------------------------------------------

DOC = (
    "The pull stage reads every source named in params.yaml and writes one Parquet file per source. Each record "
    "keeps the file and line it came from, so that its history can be read from the data alone. A malformed line "
    "stops the stage with the file and the line number, and the fix."
)


def _rewrite(path: Path, change: Callable[[dict[str, Any]], None], *, checksum: bool) -> None:
    entry = json.loads(path.read_text(encoding="utf-8"))
    change(entry)
    if checksum:  # a consistent entry: only the schema (or the reader's own check) can tell
        entry["sha256"] = _cache.digest({k: entry[k] for k in ("key", "origin", "schema", "value")})
    path.write_text(json.dumps(entry), encoding="utf-8")


JSON_FAULTS: dict[str, Callable[[Path], None]] = {
    "entry {'x': 1}": lambda p: p.write_text('{"x": 1}', encoding="utf-8"),
    "entry []": lambda p: p.write_text("[]", encoding="utf-8"),
    "entry cut short": lambda p: _cut(p, 40),
    "value altered, checksum not": lambda p: _rewrite(p, _alter, checksum=False),
    "value {'x': 1} with its checksum": lambda p: _rewrite(p, lambda e: e.update(value={"x": 1}), checksum=True),
    "value [] with its checksum": lambda p: _rewrite(p, lambda e: e.update(value=[]), checksum=True),
    "entry of another key": lambda p: _rewrite(p, lambda e: e.update(key="another"), checksum=True),
}


def _alter(entry: dict[str, Any]) -> None:
    value = entry["value"]
    if isinstance(value, dict):
        value["completion"] = " What is steep?\nAnswer: A tool."
    else:
        value[0]["scores"] = {k: 0.123 for k in value[0]["scores"]}


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    return tiny_llama(root / "model", chat_tokenizer(root / "tok"), max_positions=4096)


def _synthesize(model: Path, tmp: Path, out: str) -> tuple[dict[str, Any], bytes, bytes]:
    over = {
        "synthesize.generation.max_new_tokens": 12,
        "synthesize.documents.max_chunk_chars": 300,
        "synthesize.documents.min_chunk_chars": 100,
        "synthesize.documents.samples_per_chunk": 2,
        "synthesize.self_instruct.enable": False,
        "dedup.semantic.enable": False,  # no embedding here: the embedding cache has its own faults above
    }
    params = _params.load(ROOT / "params.yaml", synthesize.PARAMS, overrides=over)
    curated = tmp / "curated.parquet"
    rec = _records.make_record(
        source="docs", kind="document", text=DOC, meta={"source_file": "d.md", "row": 1, "source_index": 0}
    )
    _records.write_records(curated, [rec])
    (tmp / out).mkdir()
    m = synthesize.run(
        params,
        inputs={"in": curated, "model": model, "seed_tasks": ROOT / "data/sources/seed_tasks.jsonl"},
        outputs={"out": tmp / out / "synthetic.parquet", "rejects": tmp / out / "rejected.parquet"},
        cache=tmp / "cache",
    )
    return m, (tmp / out / "synthetic.parquet").read_bytes(), (tmp / out / "rejected.parquet").read_bytes()


@pytest.mark.parametrize("case", list(JSON_FAULTS))
def test_synthesize_cache_faults(case: str, llm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cold = _synthesize(llm, tmp_path, "cold")
    entries = list(_cache.entry_files(tmp_path / "cache"))
    assert len(entries) == cold[0]["prompts"] == 2
    JSON_FAULTS[case](entries[0])
    caplog.set_level(logging.INFO)
    again = _synthesize(llm, tmp_path, "again")
    assert again == cold  # metrics and both outputs' bytes
    assert f"{entries[0]} is damaged" in caplog.text or f"cache entry {entries[0]} is damaged" in caplog.text
    assert "1 cached, 1 to generate" in caplog.text


# --- probe results --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    (root / "text.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in TEXTS) + "\n", encoding="utf-8")
    return tiny_llama(root / "model", chat_tokenizer(root / "tok"))


def _baseline(model: Path, tmp: Path) -> tuple[dict[str, Any], bytes]:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    task = {"name": "text", "type": "perplexity", "path": str(model.parent / "text.jsonl"), "fields": {"text": "body"}}
    section = raw["probe"] | {"precision": "fp32", "batch_size": 2, "showcase_prompts": [], "tasks": [task]}
    train = raw["train"]["chat"] | {"quantization": "none", "compute_dtype": "float32"}
    params = _params.load(
        write_params(tmp / "params.yaml", probe=section, train={"chat": train}), baseline.STAGE.keys("chat")
    )
    out = tmp / "base.parquet"
    m = baseline.run(params, variant="chat", inputs={"model": model}, outputs={"out": out}, cache=tmp / "cache")
    return m, out.read_bytes()


PROBE_FAULTS = {
    **JSON_FAULTS,
    "rows of other items, with checksum": lambda p: _rewrite(
        p, lambda e: [r.update(item=r["item"] + 100) for r in e["value"]], checksum=True
    ),
}


@pytest.mark.parametrize("case", list(PROBE_FAULTS))
def test_probe_cache_faults(case: str, probe_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cold, cold_bytes = _baseline(probe_model, tmp_path)
    (entry,) = _cache.entry_files(tmp_path / "cache")
    PROBE_FAULTS[case](entry)
    caplog.set_level(logging.INFO)
    again, again_bytes = _baseline(probe_model, tmp_path)
    assert again_bytes == cold_bytes
    assert (again["tasks_evaluated"], again["tasks_cached"]) == (1, 0)
    assert {k: v for k, v in again.items() if not k.startswith("tasks_")} == {
        k: v for k, v in cold.items() if not k.startswith("tasks_")
    }
    assert f"cache entry {entry} is damaged" in caplog.text


def test_baseline_writes_nothing_when_its_metrics_fail(
    probe_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage writes its output only once the work that can fail is done (it wrote a 0-row parquet before)."""

    def fail(*_: Any) -> None:
        raise ValueError("metrics failed")

    monkeypatch.setattr(baseline, "task_metrics", fail)
    with pytest.raises(ValueError, match="metrics failed"):
        _baseline(probe_model, tmp_path)
    assert not (tmp_path / "base.parquet").exists()


# --- keys hold library versions -------------------------------------------------------------------------------------


def _with_version(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    real = _cache.version
    monkeypatch.setattr(_cache, "version", lambda p: "99.0" if p == package else real(p))


@pytest.mark.parametrize("package", ["scikit-learn", "torch", "model2vec", "sentence-transformers", "transformers"])
def test_the_static_tables_key_changes_with_library_versions(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = embed.resolve_model_dir(_emb("static").model)
    before = static_embed.static_key(model, 64, VOCAB)
    _with_version(monkeypatch, package)
    assert static_embed.static_key(model, 64, VOCAB) != before


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("sentence-transformers", lambda: _cache.digest(embed.vector_origin("transformer"))),
        ("tokenizers", lambda: _cache.digest(embed.vector_origin("static"))),
        ("transformers", lambda: generation.completion_cache(Path("c")).path("k")),
        ("lm_eval", lambda: probe_cache.results_cache(Path("c"), "stages.probe.engine").path("k")),
        ("peft", lambda: probe_cache.results_cache(Path("c"), "stages.probe.engine").path("k")),
        ("gguf", checkpoints.conversion_code),
    ],
)
def test_every_cache_key_changes_with_its_libraries(
    package: str, name: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = name()
    _with_version(monkeypatch, package)
    assert name() != before


# --- steep cache verify / prune -------------------------------------------------------------------------------------


def test_verify_reports_damage_fix_removes_it_and_prune_drops_stale_entries(
    tmp_path: Path, table: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / ".steep_cache"
    _vectors("static", _with_table(root / "embeddings", table))
    completions = generation.completion_cache(root / "synthesize")
    for i in range(3):
        completions.put(f"k{i}", {"completion": f"c{i}", "finished": True, "new_tokens": 1})
    assert steep.main(["cache", "verify", "--cache-dir", str(root)]) == 0
    healthy = capsys.readouterr().out
    assert f"{root / 'synthesize'}" in healthy and f"{root / 'embeddings' / embed_cache.FILE}" in healthy

    _sql(root / "embeddings", "UPDATE vectors SET vec = substr(vec, 1, 100) WHERE rowid = 1")
    JSON_FAULTS["value altered, checksum not"](completions.path("k0"))
    _garble(_table(root / "embeddings") / "vectors.safetensors")
    assert steep.main(["cache", "verify", "--cache-dir", str(root)]) == 1
    out = capsys.readouterr().out
    counts = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(str(tmp_path))}
    assert counts[str(root / "synthesize")] == ["2", "1", "0", "0"]
    assert counts[str(root / "embeddings" / embed_cache.FILE)] == [str(len(TEXTS) - 1), "1", "0", "0"]
    assert counts[str(root / "embeddings" / "static")] == ["0", "1", "0", "0"]
    assert "steep cache verify --fix" in out

    assert steep.main(["cache", "verify", "--fix", "--cache-dir", str(root)]) == 0
    assert steep.main(["cache", "verify", "--cache-dir", str(root)]) == 0
    capsys.readouterr()

    # a new torch: every entry computed by it is stale; prune drops them and what was moved aside
    _with_version(monkeypatch, "torch")
    assert steep.main(["cache", "prune", "--dry-run", "--cache-dir", str(root)]) == 0
    assert completions.path("k1").exists()
    assert steep.main(["cache", "prune", "--cache-dir", str(root)]) == 0
    assert not list(_cache.entry_files(root / "synthesize"))
    assert not list((root / "embeddings" / "static").iterdir())
    db = sqlite3.connect(root / "embeddings" / embed_cache.FILE)
    assert db.execute("SELECT count(*) FROM vectors").fetchone() == (0,)
    shutil.rmtree(tmp_path / "user", ignore_errors=True)


def test_verify_checks_model_conversions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A conversion entry: its files against their recorded sha256, its name's code against this code's."""
    models = tmp_path / ".steep_cache" / "models"
    code = checkpoints.conversion_code()
    for name in (f"ab-bfloat16-{code}", f"cd-bfloat16-{code}", "ef-bfloat16-0123456789abcdef"):
        entry = models / name
        entry.mkdir(parents=True)
        (entry / "model.safetensors").write_text("w", encoding="utf-8")
        files = {"model.safetensors": {"sha256": sha256_file(entry / "model.safetensors"), "bytes": 1}}
        (entry / checkpoints.RECORD).write_text(json.dumps({"files": files}), encoding="utf-8")
    (models / f"cd-bfloat16-{code}" / "model.safetensors").write_text("x", encoding="utf-8")  # damaged
    assert steep.main(["cache", "verify", "--cache-dir", str(models.parent)]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(str(models)))
    assert line.split()[1:] == ["1", "1", "1", "0"]
    assert steep.main(["cache", "prune", "--cache-dir", str(models.parent)]) == 0
    assert [p.name for p in models.iterdir()] == [f"ab-bfloat16-{code}"]
