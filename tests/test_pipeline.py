"""The real pipeline, run by real DVC in a temporary copy of the repository.

One module-scoped run of `dvc repro` on the embedded demo data feeds every test
here: the answer key of planted defects (checked per reason code), the
metrics invariant, a second `dvc repro` that runs nothing, a clean `dvc status`,
and byte-identical outputs after `dvc repro -f`. In the copy, both variants
point at tiny random models (2 layers, 300-token vocabulary, built here) and
train for a few steps, so the per-variant stages run end to end in CI in a
minute or two; README's `make demo` runs the same stages on the real models.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from stages.core.records import REJECT_SCHEMA, read_record_dir, read_records

ROOT = Path(__file__).resolve().parents[1]
ANSWER_KEY = json.loads((ROOT / "data/sources/answer_key.json").read_text())
DATA_STAGES = ("pull", "moderate", "dedup")
MODEL_STAGES = ("generator", "synthesize", "report")
VARIANTS = ("base", "chat")
VARIANT_STAGES = tuple(
    f"{s}@{v}" for s in ("models", "template", "tokenize", "train", "baseline", "probe") for v in VARIANTS
)
OUTPUTS = (
    "data/pulled",
    "data/moderated.parquet",
    "data/curated.parquet",
    "data/synthetic.parquet",
    "data/rejected",
    "data/probe",
    "data/templated",
    "data/tokenized",
    "models",
)
# metrics whose bytes are a function of data and params (train's hold tokens/s and memory)
STABLE_METRICS = (
    *(f"metrics/{s}.json" for s in DATA_STAGES),
    *(f"metrics/{s}_{v}.json" for s in ("models", "template", "tokenize", "baseline", "probe") for v in VARIANTS),
)
# the demo trains for minutes on the real models; here: tiny models, a few steps, a higher learning rate
# evaluated every 2 steps: the first evaluation comes early, so that "the loss goes down" does not hang on
# one step-5 vs step-10 comparison of a random tiny model (it tied at 5.4928 once)
TINY_TRAIN = {"max_steps": 10, "eval_every_steps": 2, "save_every_steps": 2, "learning_rate": 0.01}
# a random generator writes noise: few tokens a call, two self-instruct prompts
TINY_SYNTHESIZE = {"generation": {"max_new_tokens": 8}, "self_instruct": {"num_prompts": 2}}


def _env(**extra: str | None) -> dict[str, str]:
    """This process's environment for a child, offline, with `extra` set (None: removed)."""
    env = dict(os.environ)
    # `python` in dvc.yaml's cmd must be this interpreter (the project's venv).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1")
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _run(args: list[str], cwd: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=_env(**env), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _offline_prefix() -> list[str]:
    """`unshare -rn` runs a command in a network namespace with no network at all, where allowed."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-rn"]
    return []


def _dvc(cwd: Path, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """Run DVC with no network (where the sandbox allows it): the pipeline must not need one."""
    proc = _run([*_offline_prefix(), sys.executable, "-m", "dvc", *args], cwd, **env)
    logs = proc.stdout + proc.stderr
    assert "Traceback" not in logs, logs
    return proc


def _digest(repo: Path) -> dict[str, str]:
    """sha256 of every output file of the pipeline and of its data-determined metrics."""
    out = {}
    for rel in (*OUTPUTS, *STABLE_METRICS):
        base = repo / rel
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for f in files:
            out[str(f.relative_to(repo))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _use_tiny_models(repo: Path) -> None:
    """Point both variants of the copy at tiny random Llama checkpoints (with SmolLM2- and Gemma-like tokenizers)."""
    import yaml

    from tests.stages._tiny import base_tokenizer, chat_tokenizer, tiny_llama

    params_file = repo / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    for variant, make_tokenizer in (("base", base_tokenizer), ("chat", chat_tokenizer)):
        out = repo / "tiny_models" / variant
        # byte-level 300-token vocabularies: a synthesize prompt is ~1,000 tokens
        tiny_llama(out, make_tokenizer(out), max_positions=2048)
        raw["variants"][variant]["model"] = {"source": f"tiny_models/{variant}", "dtype": "float32"}
        raw["train"][variant].update(TINY_TRAIN)
    # Knowledge infusion into the chat model: documents as plain text, three passes over them beside the rest.
    raw["template"]["chat"]["documents_as"] = "text"
    raw["tokenize"]["chat"]["mixture"] = {"sources": {}, "kinds": {"document": 3}}
    raw["synthesize"]["generator"] = {"source": "tiny_models/chat", "dtype": "float32"}
    for section, values in TINY_SYNTHESIZE.items():
        raw["synthesize"][section].update(values)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    # a local model source is a dependency of the stage that reads it (the stages refuse to run otherwise)
    dvc_file = repo / "dvc.yaml"
    text = dvc_file.read_text()
    local_sources = (("models", "        ", "tiny_models/${key}"), ("generator", "      ", "tiny_models/chat"))
    for stage, indent, dep in local_sources:
        start = text.index(f"\n  {stage}:\n")
        deps = text.index("deps:\n", start) + len("deps:\n")
        text = f"{text[:deps]}{indent}- {dep}\n{text[deps:]}"
    dvc_file.write_text(text)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh git + DVC copy of the working tree with `dvc repro` run once."""
    dst = tmp_path_factory.mktemp("steep") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    for rel in OUTPUTS:  # never start from outputs of the working tree
        assert not (dst / rel).exists()
    _use_tiny_models(dst)
    _run(["git", "init", "-q"], dst)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], dst)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], dst)
    _dvc(dst, "repro")
    return dst


def _origin(r: dict) -> tuple:
    """(source, row) of a record; a facts file's line gives several records: (source, row, statement or 0)."""
    meta = r["meta"]
    return (r["source"], meta["row"], meta.get("statement", 0)) if "fact" in meta else (r["source"], meta["row"])


@pytest.fixture(scope="module")
def outcomes(repo: Path) -> dict[tuple, tuple[str, dict]]:
    """(source, row) -> (outcome, meta): a drop reason, or "kept" with the record's final meta."""
    result: dict[tuple, tuple[str, dict]] = {}
    for stage in ("moderate", "dedup"):
        for r in read_records(repo / f"data/rejected/{stage}.parquet", REJECT_SCHEMA):
            result[_origin(r)] = (r["reason"], r["meta"])
    for r in read_records(repo / "data/curated.parquet"):
        key = _origin(r)
        assert key not in result, f"{key} both kept and rejected"
        result[key] = ("kept", r["meta"])
    return result


def test_every_record_is_accounted_for(repo: Path, outcomes: dict) -> None:
    pulled = read_record_dir(repo / "data/pulled")
    assert {_origin(r) for r in pulled} == set(outcomes)


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_metrics_invariant(repo: Path, stage: str) -> None:
    m = json.loads((repo / f"metrics/{stage}.json").read_text())
    dropped = sum(v for k, v in m.items() if k.startswith("dropped_"))
    assert m["total"] == m["kept"] + dropped
    if stage != "pull":
        rejects = read_records(repo / f"data/rejected/{stage}.parquet", REJECT_SCHEMA)
        assert len(rejects) == dropped
        for reason in {r["reason"] for r in rejects}:
            assert m[f"dropped_{reason}"] == sum(r["reason"] == reason for r in rejects)


def _expected(outcome_filter=None) -> list[tuple[str, int, str]]:
    return [
        (source, int(row), outcome)
        for source, rows in sorted(ANSWER_KEY.items())
        for row, outcome in sorted(rows.items(), key=lambda kv: int(kv[0]))
        if outcome_filter is None or outcome_filter(outcome)
    ]


def _check(outcome: str, actual: str, meta: dict) -> bool:
    if outcome == "normalized_noinput":
        return actual == "kept" and "noinput" in meta["moderate"]["normalized"]
    if outcome.startswith("redacted_pii_"):
        return actual == "kept" and outcome.removeprefix("redacted_pii_") in meta["moderate"]["redacted"]
    if outcome == "flag_cleanlab_label_issue":
        return actual == "kept" and meta["moderate"]["cleanlab"].get("is_label_issue") is True
    if actual == "kept" and outcome in meta.get("moderate", {}).get("flags", {}):
        return True  # a rule that flags by default catches its planted record without dropping it
    if actual == "kept" and outcome in meta.get("dedup", {}).get("flags", {}):
        return True  # so does a dedup method that flags
    return actual == outcome


# Planted defects the default embedder (common.embedding.kind: static) does not find, measured: the demo's
# paraphrases sit at static cosine ~0.92, below dedup.semantic.cosine_threshold 0.98 (MiniLM: >= 0.95), and
# the static 20-NN vote predicts the demo's categories for 0.40 of its records (< min_label_vote_accuracy 0.5),
# so the label check is skipped. With kind: transformer (MiniLM) both are caught: tests/stages/test_dedup.py
# (paraphrase pairs) and test_moderate.py (the planted mislabel). Strict: a change that catches them fails here.
STATIC_MISSES = {
    "semantic_duplicate": "static vectors: demo paraphrases at cosine ~0.92 < 0.98",
    "flag_cleanlab_label_issue": "static vectors: label vote accuracy 0.40 < 0.5, label check skipped",
}


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(o, marks=pytest.mark.xfail(strict=True, reason=STATIC_MISSES[o])) if o in STATIC_MISSES else o
        for o in sorted({o for *_, o in _expected()})
    ],
)
def test_planted_defects_are_caught(outcomes: dict, outcome: str) -> None:
    """Every planted record in the answer key ends with the outcome the key names."""
    misses = []
    for source, row, want in _expected(lambda o: o == outcome):
        actual, meta = outcomes[(source, row)]
        if not _check(want, actual, meta):
            misses.append(f"{source} row {row}: expected {want}, got {actual}")
    assert not misses, "\n".join(misses)


def test_no_clean_record_is_dropped(outcomes: dict) -> None:
    planted = {(s, r) for s, r, _ in _expected()}
    dropped = defaultdict(list)
    for key, (actual, _) in sorted(outcomes.items()):
        if key not in planted and actual != "kept":
            dropped[actual].append(key)
    assert not dropped, f"clean records dropped: {dict(dropped)}"


def test_second_repro_runs_nothing_and_status_is_clean(repo: Path) -> None:
    before = _digest(repo)
    out = _dvc(repo, "repro").stdout
    for stage in (*DATA_STAGES, *MODEL_STAGES, *VARIANT_STAGES):
        assert f"Running stage '{stage}'" not in out
    assert "didn't change" in out or "up to date" in out
    status = _dvc(repo, "status").stdout
    assert "up to date" in status.lower(), status
    assert _digest(repo) == before


def test_forced_rerun_is_byte_identical(repo: Path) -> None:
    before = _digest(repo)
    # a cold embedding cache must give the same bytes as a warm one
    shutil.rmtree(repo / ".steep_cache")
    _dvc(repo, "repro", "-f")
    assert _digest(repo) == before


def test_another_cpus_kernels_give_the_same_curation_bytes(repo: Path) -> None:
    """PyTorch picks its CPU kernels by instruction set, and so would a colleague's machine: under another
    CPU's kernels (ATEN_CPU_CAPABILITY) and a cold embedding cache, the curation stages write the same bytes,
    so nothing after them is outdated.
    """
    before = _digest(repo)
    # "default" (no SIMD) against this run's setting; where that already was "default", the native kernels
    other = None if os.environ.get("ATEN_CPU_CAPABILITY") == "default" else "default"
    shutil.rmtree(repo / ".steep_cache" / "embeddings")
    out = _dvc(repo, "repro", "-f", "dedup", ATEN_CPU_CAPABILITY=other).stdout
    assert "Running stage 'moderate'" in out and "Running stage 'dedup'" in out, out
    assert _digest(repo) == before
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}


@pytest.mark.parametrize(
    ("key", "value", "stages"),
    [
        ("pull.web.timeout_s", 5, ["pull"]),
        # synthesize applies moderate's rules to every generated pair
        ("moderate.toxicity.max_probability", 0.7, ["moderate", "synthesize"]),
        # synthesize runs dedup's MinHash on its pairs (and its references)
        ("dedup.minhash.jaccard_threshold", 0.6, ["dedup", "synthesize"]),
        ("synthesize.filters.max_rouge_l", 0.6, ["synthesize"]),
        # the generator's model: its own checkpoint (synthesize follows when the checkpoint's bytes change)
        ("synthesize.generator.dtype", "bfloat16", ["generator"]),
        # the report takes the names of its variants from the variants section
        ("variants.chat.model.dtype", "bfloat16", ["models@chat", "report"]),
        # a data experiment: the probe stages read only the template keys that render their prompts
        ("template.base.documents_as", "skip", ["template@base"]),
        ("tokenize.chat.max_tokens", 128, ["tokenize@chat"]),
        ("train.chat.lora_rank", 4, ["train@chat"]),
        # the bootstrap does not change what the baseline measured
        ("probe.confidence", 0.9, ["probe@base", "probe@chat"]),
        ("probe.max_new_tokens", 32, ["baseline@base", "baseline@chat", "probe@base", "probe@chat"]),
        ("report.max_examples_per_task", 3, ["report"]),
    ],
)
def test_a_param_change_outdates_only_the_stages_that_read_it(
    repo: Path, key: str, value: float, stages: list[str]
) -> None:
    original = _set_param(repo, key, value)
    try:
        status = json.loads(_dvc(repo, "status", "--json").stdout)
    finally:
        (repo / "params.yaml").write_text(original)
    assert sorted(status) == stages, status
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}


def _set_param(repo: Path, key: str, value: object) -> str:
    """Set dotted `key` in the copy's params.yaml; return the file's text before."""
    import yaml

    params_file = repo / "params.yaml"
    original = params_file.read_text()
    raw = yaml.safe_load(original)
    section = raw
    *parents, last = key.split(".")
    for part in parents:
        section = section[part]
    section[last] = value
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return original


@pytest.mark.parametrize(("key", "value"), [("variants.chat.model.dtype", "bfloat16"), ("train.chat.lora_rank", 4)])
def test_a_chat_variant_change_runs_no_base_stage(repo: Path, key: str, value: object) -> None:
    """What `dvc repro` actually runs after a change to the chat variant: chat stages (and the report) only."""
    original = _set_param(repo, key, value)
    try:
        ran = set(re.findall(r"Running stage '([^']+)'", _dvc(repo, "repro").stdout))
    finally:
        (repo / "params.yaml").write_text(original)
        _dvc(repo, "repro")  # back to the committed state (DVC's run cache restores the outputs)
    assert ran, "nothing ran"
    assert all(s.endswith("@chat") or s == "report" for s in ran), sorted(ran)
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}


@pytest.mark.parametrize(
    ("path", "stages"),
    [
        # the probe task types: what the probe stages and the report compute from
        ("stages/probe/types.py", ["baseline@base", "baseline@chat", "probe@base", "probe@chat", "report"]),
        # the training loop: never the pretrained model's evaluation (baseline)
        ("stages/variant/train.py", ["train@base", "train@chat"]),
    ],
)
def test_a_code_edit_outdates_only_the_stages_that_run_it(repo: Path, path: str, stages: list[str]) -> None:
    source = repo / path
    original = source.read_text()
    try:
        source.write_text(original + "\n# an edit\n")
        status = json.loads(_dvc(repo, "status", "--json").stdout)
    finally:
        source.write_text(original)
    assert sorted(status) == stages, status


def test_fresh_run_reproduces_the_committed_lock_and_metrics(repo: Path) -> None:
    """A run from scratch (cold caches, another directory) gives the very hashes and metrics committed in git.

    If this fails after a change to code, data or params, run `dvc repro` and commit dvc.lock and metrics/.
    """
    import yaml

    lock, committed = (yaml.safe_load((r / "dvc.lock").read_text())["stages"] for r in (repo, ROOT))
    for stage in DATA_STAGES:  # the copy runs the per-variant stages on tiny models: those differ by design
        assert lock[stage] == committed[stage], stage
    for rel in (f"metrics/{s}.json" for s in DATA_STAGES):
        assert (repo / rel).read_text() == (ROOT / rel).read_text(), rel


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_and_its_validation_loss_goes_down(repo: Path, variant: str) -> None:
    m = json.loads((repo / f"metrics/train_{variant}.json").read_text())
    assert m["eval_loss"] < m["first_eval_loss"], m
    adapter = repo / f"models/{variant}/adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert not list(adapter.glob("*.bin"))
    assert (repo / f"dvclive/train_{variant}/plots/metrics/eval/loss.tsv").is_file()
    tok = json.loads((repo / f"metrics/tokenize_{variant}.json").read_text())
    assert tok["train_examples"] > 0 and tok["validation_examples"] > 0


@pytest.mark.parametrize(("variant", "end"), [("base", "<eos>"), ("chat", "<|im_end|>\n")])
def test_masks_cover_exactly_the_responses(repo: Path, variant: str, end: str) -> None:
    """Decoding the label tokens of every untruncated instruction example gives back its response and end token."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(repo / f"models/{variant}/base")
    records = {r["id"]: r for f in ("curated", "synthetic") for r in read_records(repo / f"data/{f}.parquet")}
    max_tokens = yaml_params(repo)["tokenize"][variant]["max_tokens"]
    checked = 0
    for row in load_from_disk(str(repo / f"data/tokenized/{variant}"))["train"]:
        record = records[row["ids"][0].split("/")[0]]
        if record["kind"] != "instruction" or len(row["input_ids"]) >= max_tokens:
            continue
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        assert tok.decode(trained) == record["output"] + end, record["id"]
        assert -100 in row["labels"]  # the prompt is masked
        checked += 1
    assert checked >= 30  # tiny byte-level vocabularies: most examples exceed max_tokens and are skipped


def test_chat_trains_on_documents_as_text_three_times(repo: Path) -> None:
    """documents_as: text for the chat variant, with a mixture of 3 passes over the documents, end to end."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    start = AutoTokenizer.from_pretrained(repo / "models/chat/base").convert_tokens_to_ids("<|im_start|>")
    documents = {r["id"]: r for r in read_records(repo / "data/curated.parquet") if r["kind"] == "document"}
    assert documents
    template = json.loads((repo / "metrics/template_chat.json").read_text())
    assert template["kept_document"] == len(documents) and "dropped_document_skipped" not in template
    m = json.loads((repo / "metrics/tokenize_chat.json").read_text())
    copies: dict[str, int] = {}
    document_tokens = 0
    for row in load_from_disk(str(repo / "data/tokenized/chat"))["train"]:
        example = row["ids"][0].split("#")[0]  # <record id>/<chunk>, the same for each of its copies
        if example.split("/")[0] not in documents:
            continue
        copies[example] = copies.get(example, 0) + 1
        document_tokens += len(row["input_ids"])
        # plain text: no chat template around it, every token but the first trained
        assert start not in row["input_ids"] and row["labels"] == [-100, *row["input_ids"][1:]]
    assert copies and set(copies.values()) == {3}, copies  # each document chunk three times, no more
    assert m["train_tokens_document"] == document_tokens > 0
    kinds = ("instruction", "conversation", "qa", "document", "restatement", "doc_qa")
    assert m["train_tokens"] == sum(m[f"train_tokens_{k}"] for k in kinds)
    assert json.loads((repo / "metrics/train_chat.json").read_text())["steps"] > 0


def yaml_params(repo: Path) -> dict:
    import yaml

    return yaml.safe_load((repo / "params.yaml").read_text())


def test_synthesize_rerun_makes_no_model_call(repo: Path, tmp_path: Path) -> None:
    """With the generation cache of the run, the stage's command makes zero calls and writes the same pairs."""
    out = tmp_path / "synthetic.parquet"
    cmd = (
        "python -m stages.curate.synthesize --params params.yaml --in data/curated.parquet --model models/chat/base "
        f"--seed-tasks data/sources/seed_tasks.jsonl --out {out} --rejects {tmp_path / 'rejected.parquet'} "
        f"--metrics {tmp_path / 'm.json'} --cache .steep_cache/synthesize --embeddings .steep_cache/embeddings"
    )
    proc = _run(cmd.split(), repo)
    m = json.loads((tmp_path / "m.json").read_text())
    first = json.loads((repo / "metrics/synthesize.json").read_text())
    assert m["prompts"] == first["prompts"] > 0
    assert f"{m['prompts']} prompts: {m['prompts']} cached, 0 to generate" in proc.stdout + proc.stderr
    assert out.read_bytes() == (repo / "data/synthetic.parquet").read_bytes()
    assert m["total"] == first["total"] and m["kept"] == first["kept"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_probe_compares_every_task_and_the_report_shows_it(repo: Path, variant: str) -> None:
    import yaml

    tasks = [t["name"] for t in yaml.safe_load((repo / "params.yaml").read_text())["probe"]["tasks"]]
    m = json.loads((repo / f"metrics/probe_{variant}.json").read_text())
    for task in tasks:
        for metric, v in m[task].items():
            if isinstance(v, dict):
                assert v["ci_low"] <= v["delta"] <= v["ci_high"], (task, metric, v)
                assert v["delta"] == pytest.approx(v["adapted"] - v["base"], abs=1e-5)
        assert m[task]["forgetting"] in (0, 1) and m[task]["gain"] in (0, 1)
        assert {"test", "p", "p_adjusted", "mde"} <= set(m[task]) and m[task]["p"] <= m[task]["p_adjusted"], task
    assert m["general_mc"]["test"] == "mcnemar"
    report = (repo / "metrics/report.md").read_text()
    for name in (*tasks, "synthesize", "dedup", "reference"):
        assert name in report, name
    assert "<svg" in (repo / "metrics/report.html").read_text()


def _audit(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "stages.commands.main", "audit", *args]
    return subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True, check=False)


def test_audit_holds_on_a_rerun_and_names_planted_differences(repo: Path) -> None:
    """`steep audit`: a clean rerun of the commit holds; an edited demo record and a changed probe answer do not,
    and the table names the record (id, origin, field) and the probe's score difference."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "-A"], repo)
    _run([*git, "commit", "-qm", "run 0", "--allow-empty"], repo)
    clean = _audit(repo, "--stages", "moderate")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "| moderate | data/moderated.parquet | identical |" in clean.stdout
    assert "| pull | data/pulled | identical |" in clean.stdout
    demo, mc = repo / "data/sources/alpaca_demo.jsonl", repo / "data/sources/heldout/general_mc.jsonl"
    lines = demo.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    demo.write_text(json.dumps({**first, "output": first["output"] + " An edit."}) + "\n" + "".join(lines[1:]))
    items = [json.loads(line) for line in mc.read_text().splitlines()]
    # every answer moved to the next choice: a random tiny model's accuracy moves with it (one item might not)
    items = [{**i, "answer": (i["answer"] + 1) % len(i["choices"])} for i in items]
    mc.write_text("".join(json.dumps(i) + "\n" for i in items))
    try:
        # tolerance 0: any score difference counts (the tiny models' scores repeat exactly on one machine)
        planted = _audit(repo, "--workspace", "--stages", "probe@chat", "--score-tolerance", "0")
    finally:
        _run(["git", "checkout", "--", str(demo), str(mc)], repo)
    out = planted.stdout
    assert planted.returncode == 1, out + planted.stderr
    pull = next(line for line in out.splitlines() if line.startswith("| pull | data/pulled |"))
    assert "| different |" in pull and "(now " in pull and "output" in pull, pull
    scored = [
        line for line in out.splitlines() if line.startswith(("| baseline@chat | metrics/", "| probe@chat | metrics/"))
    ]
    assert any("| different |" in line and "general_mc" in line for line in scored), out


def test_metrics_diff_across_commits_shows_the_probe_deltas_move(repo: Path) -> None:
    """Two commits that differ in one training param: `dvc metrics diff` shows the chat probe's deltas changed.

    Runs last: it leaves the copy at the second commit.
    """
    import yaml

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "-A"], repo)
    _run([*git, "commit", "-qm", "run 1", "--allow-empty"], repo)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["train"]["chat"]["learning_rate"] = 0.03
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = _dvc(repo, "repro").stdout
    assert "Running stage 'train@chat'" in out and "Running stage 'probe@chat'" in out
    assert "Running stage 'baseline@chat'" not in out and "Running stage 'train@base'" not in out
    _run([*git, "add", "-A"], repo)
    _run([*git, "commit", "-qm", "run 2: train.chat.learning_rate 0.03"], repo)
    diff = json.loads(_dvc(repo, "metrics", "diff", "HEAD~1", "--json").stdout)
    moved = diff.get("metrics/probe_chat.json", {})
    assert any(k.endswith(".delta") and v["diff"] for k, v in moved.items()), moved
    headline = diff.get("metrics/headline.json", {})  # the one-screen comparison: the chat numbers moved, base not
    assert headline.get("chat.eval_loss", {}).get("diff"), headline
    assert not [k for k in headline if k.startswith("base.")], headline
    assert "metrics/probe_base.json" not in diff and "metrics/baseline_chat.json" not in diff
