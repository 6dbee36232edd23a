"""Probe tasks named as lm-evaluation-harness tasks (``harness_task``): the harness's items, prompts and numbers.

The Hub is off in tests (conftest), so the named task lives in a folder of harness YAMLs (``harness_include``) over
local JSONL files: a description, Jinja prompts, a ``process_docs`` function, a target given as the choice text,
and two few-shot examples drawn from a training split. A registry task (``arc_easy``) is refused offline with a
message that says why and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.probe import ProbeTask
from stages.probe import baseline
from stages.probe import engine as _engine
from stages.probe import settings as _settings
from stages.probe import tasks as _tasks
from tests.stages.test_probe import _params_file, _rows, tiny  # noqa: F401  (tiny: the module fixture)

TRAIN = [
    {"q": "Which is a fruit?", "opts": ["apple", "stone", "cloud"], "label": "apple"},
    {"q": "Which one can fly?", "opts": ["rock", "bird"], "label": "bird"},
    {"q": "Which is wet?", "opts": ["water", "sand", "ash"], "label": "water"},
]
TEST = [
    {"q": "what is the capital of france", "opts": ["Paris", "Berlin", "the lazy dog"], "label": "Paris"},
    {"q": "which animal jumps over the dog", "opts": ["fox", "a quick brown fox"], "label": "a quick brown fox"},
    {"q": "what does steep curate", "opts": ["rocks", "instruction data", "weather"], "label": "instruction data"},
    {"q": "capital of germany", "opts": ["Berlin", "Paris"], "label": "Berlin"},
    {"q": "odd one out", "opts": ["dog", "fox", "capital"], "label": "capital"},
]  # fmt: skip
UTILS = """
def process_docs(dataset):
    return dataset.map(lambda d: {"q": d["q"][0].upper() + d["q"][1:] + "?"})
"""


def _yaml(name: str, tmp: Path, **over: str) -> str:
    lines = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": f"\n  data_files:\n    train: {tmp / 'train.jsonl'}\n    test: {tmp / 'test.jsonl'}"
        f"\n  cache_dir: {tmp / 'hf'}",
        "training_split": "train",
        "test_split": "test",
        "fewshot_split": "train",
        "num_fewshot": "2",
        "output_type": "multiple_choice",
        "process_docs": "!function utils.process_docs",
        "description": '"Answer each question with one of its options.\\n\\n"',
        "doc_to_text": '"Q: {{q}}\\nA:"',
        "doc_to_choice": '"{{opts}}"',
        "doc_to_target": '"{{label}}"',
        "metric_list": "\n  - metric: acc\n  - metric: acc_norm",
    } | over
    return "".join(f"{k}: {v}\n" for k, v in lines.items())


@pytest.fixture(scope="module")
def harness_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of harness task YAMLs (the include path) and their local data."""
    root = tmp_path_factory.mktemp("harness")
    for name, rows in (("train", TRAIN), ("test", TEST)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    (tasks / "local_mc.yaml").write_text(_yaml("local_mc", root))
    (tasks / "local_badtarget.yaml").write_text(_yaml("local_badtarget", root, doc_to_target='"{{label}}!"'))
    (tasks / "local_gen.yaml").write_text(
        _yaml("local_gen", root, output_type="generate_until", doc_to_choice="null", metric_list="\n  - metric: bleu")
    )
    return tasks


def _entry(harness_dir: Path, name: str = "local_mc", **over: Any) -> dict[str, Any]:
    return {"name": "hmc", "type": "multiple_choice", "harness_task": name, "harness_include": str(harness_dir)} | over


def _run_baseline(tiny: dict[str, Path], tmp: Path, tasks: list[dict[str, Any]], model: Path | None = None) -> Any:  # noqa: F811
    path = _params_file(tmp / "params.yaml", tasks, trust_harness_code=True)  # harness_include runs its Python
    params = _params.load(path, baseline.STAGE.keys("chat"))
    inputs, outputs = {"model": model or tiny["model"]}, {"out": tmp / "base.parquet"}
    return baseline.run(params, variant="chat", inputs=inputs, outputs=outputs, cache=tmp / "cache")


def test_named_harness_task_gives_the_harness_numbers(
    tiny: dict[str, Path],  # noqa: F811
    harness_dir: Path,
    tmp_path: Path,
) -> None:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = _run_baseline(tiny, tmp_path, [_entry(harness_dir)])
    rows = _rows(tmp_path / "base.parquet", "hmc")
    assert [r["item"] for r in rows] == list(range(len(TEST)))
    assert m["hmc"]["n"] == len(TEST) and m["tasks_evaluated"] == 1

    # The harness called directly on the named task, the same model.
    model = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(tiny["model"]), batch_size=4)
    out = simple_evaluate(model=lm, tasks=["local_mc"], task_manager=TaskManager(include_path=str(harness_dir)))
    samples = sorted(out["samples"]["local_mc"], key=lambda s: s["doc_id"])
    # the same contexts (description, two few-shot examples, the processed question) and the same numbers
    assert [r["prompt"] for r in rows] == [s["arguments"][0][0] for s in samples]
    assert rows[0]["prompt"].startswith("Answer each question with one of its options.\n\nQ: ")
    assert rows[0]["prompt"].count("Q: ") == 3 and rows[0]["prompt"].endswith("Q: What is the capital of france?\nA:")
    assert [(r["scores"]["acc"], r["scores"]["acc_norm"]) for r in rows] == [(s["acc"], s["acc_norm"]) for s in samples]
    assert m["hmc"]["acc"] == pytest.approx(out["results"]["local_mc"]["acc,none"], abs=1e-6)
    assert m["hmc"]["acc_norm"] == pytest.approx(out["results"]["local_mc"]["acc_norm,none"], abs=1e-6)
    # the reference is the target given as text
    assert [r["reference"] for r in rows] == [t["label"] for t in TEST]

    # limit: the first items only, the same numbers; a rerun is served from the cache
    (tmp_path / "l").mkdir()
    m2 = _run_baseline(tiny, tmp_path / "l", [_entry(harness_dir, limit=3)])
    assert m2["hmc"]["n"] == 3 and m2["tasks_evaluated"] == 1
    limited = _rows(tmp_path / "l" / "base.parquet", "hmc")
    assert [(r["prompt"], r["scores"]) for r in limited] == [(r["prompt"], r["scores"]) for r in rows[:3]]
    again = _run_baseline(tiny, tmp_path / "l", [_entry(harness_dir, limit=3)])
    assert again["tasks_evaluated"] == 0 and again["tasks_cached"] == 1


def test_num_fewshot_overrides_the_task_config_as_the_harness_does(
    tiny: dict[str, Path],  # noqa: F811
    harness_dir: Path,
    tmp_path: Path,
) -> None:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _run_baseline(tiny, tmp_path, [_entry(harness_dir, num_fewshot=1, limit=3)])
    rows = _rows(tmp_path / "base.parquet", "hmc")
    model = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(tiny["model"]), batch_size=4)
    manager = TaskManager(include_path=str(harness_dir))
    out = simple_evaluate(model=lm, tasks=["local_mc"], task_manager=manager, num_fewshot=1, limit=3)
    samples = sorted(out["samples"]["local_mc"], key=lambda s: s["doc_id"])
    assert [r["prompt"] for r in rows] == [s["arguments"][0][0] for s in samples]
    assert all(r["prompt"].count("Q: ") == 2 for r in rows)  # one example, then the question
    assert [r["scores"]["acc"] for r in rows] == [s["acc"] for s in samples]


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"harness_task": "arc_easy", "harness_include": None}, r"harness_task 'arc_easy'\): cannot read its dataset "
         r"\(ConnectionError: .*allenai/ai2_arc.*run once where the Hub is reachable"),
        ({"harness_task": "arc_eazy", "harness_include": None}, r"has no task 'arc_eazy'; did you mean 'arc_easy'"),
        ({"harness_task": "mmlu", "harness_include": None}, r"'mmlu' is a harness group of several tasks; name one "
         r"task per probe task \(e\.g\. mmlu_"),
        ({"harness_task": "local_gen"}, r"its output_type is 'generate_until'; steep runs harness tasks of "
         r"output_type multiple_choice"),
        ({"harness_task": "local_badtarget"}, r"document 0: doc_to_target gives 'Paris!', neither a choice nor an "
         r"index into its 3 choices"),
        ({"harness_include": "no/such/dir"}, r"no/such/dir: harness_include of probe task 'hmc' .* is not a folder"),
    ],
)  # fmt: skip
def test_harness_task_errors_before_any_model_loads(
    harness_dir: Path, tmp_path: Path, entry: dict[str, Any], match: str
) -> None:
    # the model directory does not exist: every error comes from reading the tasks, first
    path = _params_file(tmp_path / "params.yaml", [_entry(harness_dir) | entry], trust_harness_code=True)
    params = _params.load(path, baseline.STAGE.keys("chat"))
    with pytest.raises(StageError, match=match):
        baseline.run(params, variant="chat", inputs={"model": tmp_path / "none"}, outputs={"out": tmp_path / "o"},
                     cache=tmp_path / "cache")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_harness_include_runs_only_when_trusted(harness_dir: Path, tmp_path: Path) -> None:
    """The folder's utils.py is code the harness would import: without probe.trust_harness_code the params are refused
    (every stage, before any work), naming the task and the switch, and nothing of the folder runs."""
    folder, ran = tmp_path / "tasks", tmp_path / "ran"
    folder.mkdir()
    (folder / "marker.yaml").write_text(_yaml("local_marker", harness_dir.parent, process_docs="!function marker.run"))
    (folder / "marker.py").write_text(f"def run(dataset):\n    open({str(ran)!r}, 'w').close()\n    return dataset\n")
    path = _params_file(tmp_path / "params.yaml", [_entry(folder, "local_marker")])
    with pytest.raises(StageError, match=r"probe\.tasks 'hmc' \(.*\): harness_include is code, not data.*set "
                       r"probe\.trust_harness_code: true"):  # fmt: skip
        _params.load(path, baseline.STAGE.keys("chat"))
    assert not ran.exists()
    # trusted: the task loads, and the folder's Python ran
    path = _params_file(tmp_path / "p.yaml", [_entry(folder, "local_marker")], trust_harness_code=True)
    (data,) = _tasks.read_tasks(list(_params.load(path, baseline.STAGE.keys("chat")).probe.tasks))
    assert len(data.items) == len(TEST) and ran.exists()


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"path": "x.jsonl", "fields": {"question": "q", "choices": "c", "answer": "a"}}, r"either path .* or "
         r"harness_task .*not both"),
        ({"harness_task": None}, r"either path .* or harness_task"),
        ({"fields": {"question": "q", "choices": "c", "answer": "a"}}, r"brings its own prompt, choices and target"),
        ({"prompt": "Q: {question}"}, r"brings its own prompt"),
        ({"limit": 0}, r"limit"),
    ],
)  # fmt: skip
def test_harness_task_entries_are_checked(entry: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        ProbeTask(**(_entry(Path("tasks")) | entry))
    local = {"name": "x", "type": "perplexity", "path": "t.jsonl", "fields": {"text": "t"}}
    for extra in ({"harness_include": "d"}, {"num_fewshot": 2}):
        with pytest.raises(ValidationError, match=r"harness_include and num_fewshot apply with harness_task only"):
            ProbeTask(**local, **extra)


def test_limit_on_a_local_file_takes_the_first_items_and_keys_the_cache(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"t": f"text {i}"}) + "\n" for i in range(5)))
    task = ProbeTask(name="t", type="perplexity", path=str(tmp_path / "t.jsonl"), fields={"text": "t"}, limit=2)
    (data,) = _tasks.read_tasks([task])
    assert [i for i, _ in data.items] == [0, 1]
    full = _tasks.read_tasks([task.model_copy(update={"limit": None})])[0]
    assert len(full.items) == 5 and full.sha256 == data.sha256
    settings = _settings.Settings("fp32", "none", "float32", None, 1, 1, "{question}", "m", (), (task,))  # type: ignore[arg-type]
    engine = _engine.Engine(settings, tmp_path)
    engine.__dict__["fingerprint"] = "f"  # the model directory's files play no part here
    assert engine.task_key(data) != engine.task_key(full)


def test_the_registry_refuses_a_harness_task_of_a_type_without_harness_support() -> None:
    """What a type allows is the task-type registry's: a perplexity entry naming a harness task is refused."""
    from stages.probe import types

    task = ProbeTask(**(_entry(Path("tasks")) | {"type": "perplexity"}))
    problems = types.check_task(task)
    assert any("harness_task is supported for type ['multiple_choice'] only (got perplexity)" in p for p in problems)
