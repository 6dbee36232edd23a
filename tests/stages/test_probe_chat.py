"""Tests of the chat_behaviour probe type: the checks on hand-written answers, the template's end-of-turn token and
markers, and the task through the baseline and probe stages on the tiny ChatML Llama of tests/stages/test_probe.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.probe import ProbeTask
from stages.core.params.template import AlpacaPrompts, ChatPrompts
from stages.probe import baseline, probe
from stages.probe import behaviour as _behaviour
from stages.probe import tables as _tables
from stages.probe import tasks as _taskfiles
from stages.probe.model import Rendering
from tests.stages._tiny import chat_tokenizer
from tests.stages.test_probe import ALPACA, _jsonl, _params_file, tiny  # noqa: F401  (tiny: the module fixture)

DOC = "Steep keeps every setting of the pipeline in one file, params.yaml, and reruns only the stages it changes."
CHAT = ["Say hello.", "Name a colour.", "What is two plus two?"]


@pytest.fixture(scope="module")
def chatml(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return chat_tokenizer(tmp_path_factory.mktemp("chatml"))


def _score(answer: str, ended: bool = True, markers: tuple[str, ...] = ("<|im_start|>", "<|im_start|>user")) -> dict:
    return _behaviour.item_scores(answer, ended, markers, _behaviour.windows(DOC, 12), 12)


def test_checks_on_hand_written_answers() -> None:
    ok = {"ended": 1.0, "no_turn_spill": 1.0, "not_verbatim": 1.0, "chat_ok": 1.0}
    assert _score("Hello! How can I help you today?") == ok  # ended by its end-of-turn token
    # the budget ran out before the model ended its turn
    assert _score("Hello! How can I help you today? I can", ended=False) == ok | {"ended": 0.0, "chat_ok": 0.0}
    spill = ok | {"no_turn_spill": 0.0, "chat_ok": 0.0}
    assert _score("Sure.\n<|im_start|>user\nAnd another?") == spill  # a fake next turn of the template
    assert _score("Paris.\nUser: what about Spain?") == spill  # a role line
    assert _score("Paris.\n  Human: thanks") == spill
    assert _score("Paris.\n### Instruction:\nNext") == spill  # a common template's marker at a line start
    assert _score("Ask the user: what do they need?") == ok  # a role word inside a sentence is no turn
    # twelve consecutive words of the document, other case and punctuation: recited
    verbatim = ok | {"not_verbatim": 0.0, "chat_ok": 0.0}
    assert _score("As documented: STEEP keeps every setting of the pipeline in one file -- params yaml!") == verbatim
    assert _score("Steep keeps every setting of the pipeline in one file.") == ok  # eleven words: not yet
    assert _behaviour.first_match("a\n<start_of_turn>user", ()) == "<start_of_turn>"


def test_end_of_turn_and_markers_come_from_the_template(chatml: Any, tmp_path: Path) -> None:
    im_end, im_start = chatml.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert _behaviour.end_of_turn_ids("chat_template", chatml) == {im_end}
    assert _behaviour.end_of_turn_ids("alpaca", chatml) == set()
    markers = _behaviour.turn_markers("chat_template", ChatPrompts(system=""), chatml)
    assert "<|im_start|>user" in markers and "<|im_start|>" in markers and "<|im_end|>" not in markers
    alpaca = _behaviour.turn_markers("alpaca", AlpacaPrompts(**ALPACA["prompts"]), chatml)
    assert alpaca == ("\n### ", "### Input:", "### Instruction:", "### Response:")
    # a tokenizer whose EOS is not the template's end of turn: the end of turn still ends an answer
    other = chat_tokenizer(tmp_path / "other")
    other.eos_token = "<|endoftext|>"
    assert _behaviour.end_of_turn_ids("chat_template", other) == {im_end} != {other.eos_token_id}
    assert im_start not in _behaviour.end_of_turn_ids("chat_template", other)


def _task(tmp_path: Path, prompts: list[str], documents: list[str]) -> _taskfiles.TaskData:
    path = _jsonl(tmp_path / "chat.jsonl", [{"p": p} for p in prompts])
    entry = ProbeTask(name="chat", type="chat_behaviour", path=str(path), fields={"prompt": "p"},
                      documents=documents, min_verbatim_words=12)  # fmt: skip
    return _taskfiles.read_task(entry)


def test_rows_from_token_ids(chatml: Any, tmp_path: Path) -> None:
    """Ended: the last token is an end token and no stop string came before it (the pad token may be the EOS)."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(DOC)
    (tmp_path / "docs" / "skip.json").write_text("{}")  # not a document: only .md / .txt are read
    task = _task(tmp_path, ["a", "b", "c", "d"], [str(tmp_path / "docs")])
    assert [Path(p).name for p, _ in task.documents] == ["a.md"]
    eos = chatml.eos_token_id  # <|im_end|>, also the pad token
    enc = lambda text: chatml(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    new = [
        [*enc("Hello there."), eos],  # ended in turn
        enc("Hello there, and on and"),  # the budget ran out
        [*enc("Hello.\n### Instruction:"), eos, eos],  # alpaca: cut by a stop string, then padded with the EOS
        [*enc(DOC), eos],  # the document, recited
    ]
    chat = Rendering("chat_template", ChatPrompts(system=""))
    rows = _behaviour.rows(task, ["r"] * 4, new, {eos}, chatml, chat)
    assert [r["prediction"] for r in rows[:2]] == ["Hello there.", "Hello there, and on and"]
    assert [r["scores"]["ended"] for r in rows] == [1.0, 0.0, 1.0, 1.0]
    assert [r["scores"]["not_verbatim"] for r in rows] == [1.0, 1.0, 1.0, 0.0]
    alpaca = Rendering("alpaca", AlpacaPrompts(**ALPACA["prompts"]))
    rows = _behaviour.rows(task, ["r"] * 4, new, {eos}, chatml, alpaca)
    assert [r["scores"]["ended"] for r in rows] == [1.0, 0.0, 0.0, 1.0]
    assert [r["scores"]["no_turn_spill"] for r in rows] == [1.0, 1.0, 0.0, 1.0]


def test_bad_entries_are_refused(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "chat.jsonl", [{"prompt": "Hi"}])
    bare = ProbeTask(name="chat", type="chat_behaviour", path=str(path), fields={"prompt": "prompt"})
    with pytest.raises(StageError, match=r"a chat_behaviour task names documents .* and min_verbatim_words"):
        _taskfiles.check_tasks([bare])
    kn = ProbeTask(name="kn", type="knowledge", path=str(path), fields={"question": "q", "answer": "a"},
                   documents=[], min_verbatim_words=12)  # fmt: skip
    with pytest.raises(StageError, match=r"documents, min_verbatim_words apply to types \['chat_behaviour'\] only"):
        _taskfiles.check_tasks([kn])
    with pytest.raises(StageError, match=r"nope: document path of probe task 'chat' not found"):
        _task(tmp_path, ["Hi"], [str(tmp_path / "nope")])


def test_the_task_through_baseline_and_probe(tiny: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(DOC)
    path = _jsonl(tmp_path / "chat.jsonl", [{"prompt": p} for p in CHAT])
    task = {"name": "chat", "type": "chat_behaviour", "path": str(path), "fields": {"prompt": "prompt"},
            "documents": [str(docs)], "min_verbatim_words": 12}  # fmt: skip
    params_file = _params_file(tmp_path / "params.yaml", [task])
    base_out = tmp_path / "baseline.parquet"
    params = _params.load(params_file, baseline.STAGE.keys("chat"))
    b = baseline.run(params, variant="chat", inputs={"model": tiny["model"]}, outputs={"out": base_out},
                     cache=tmp_path / "cache")  # fmt: skip
    assert b["chat"] == {"type": "chat_behaviour", "n": 3} | {k: b["chat"][k] for k in _behaviour_metrics()}
    params = _params.load(params_file, probe.STAGE.keys("chat"))
    inputs = {"model": tiny["model"], "adapter": tiny["adapter"], "baseline": base_out}
    m = probe.run(params, variant="chat", inputs=inputs, outputs={"out": tmp_path / "chat.parquet"},
                  cache=tmp_path / "cache")  # fmt: skip
    test_keys = {"test", "n", "changed", "p", "p_adjusted", "mde"}  # the paired test of the main score
    assert set(m["chat"]) == {"type", "forgetting", "gain", *test_keys, *_behaviour_metrics()}
    assert m["chat"]["test"] == "sign_flip" and m["chat"]["n"] == 3
    for k in _behaviour_metrics():
        assert m["chat"][k]["base"] == b["chat"][k] and m["chat"][k]["ci_low"] <= m["chat"][k]["ci_high"]
    rows = _tables.read_rows(tmp_path / "chat.parquet", _tables.PROBE_SCHEMA)
    assert len(rows) == 3 and {r["type"] for r in rows} == {"chat_behaviour"}
    for r in rows:
        assert r["prompt"].startswith("<|im_start|>user\n") and r["prompt"].endswith("<|im_start|>assistant\n")
        s = r["scores"]
        assert s["chat_ok"] == min(s["ended"], s["no_turn_spill"], s["not_verbatim"])
    # the documents are part of the cache key: another document evaluates the task again
    (docs / "b.md").write_text("Another document.")
    params = _params.load(params_file, baseline.STAGE.keys("chat"))
    again = baseline.run(params, variant="chat", inputs={"model": tiny["model"]}, outputs={"out": base_out},
                         cache=tmp_path / "cache")  # fmt: skip
    assert (again["tasks_evaluated"], again["tasks_cached"]) == (1, 0) and again["chat"]["n"] == 3


def _behaviour_metrics() -> tuple[str, ...]:
    return ("chat_ok", "ended", "no_turn_spill", "not_verbatim")


def test_the_report_shows_the_checks_and_the_failures_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    from stages.core import io as _io
    from tests.stages.test_report import CHATML, _metric, build_fixture, run_report

    build_fixture(tmp_path)
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "metrics" / "probe_chat.json"
    m = json.loads(metrics.read_text())
    m["chat_behaviour"] = {
        "type": "chat_behaviour", "chat_ok": _metric(1.0, 0.5, -1.0, 0.0), "ended": _metric(1.0, 0.5, -1.0, 0.0),
        "no_turn_spill": _metric(1.0, 1.0, 0.0, 0.0), "not_verbatim": _metric(1.0, 1.0, 0.0, 0.0),
        "forgetting": 0, "gain": 0,
    }  # fmt: skip
    metrics.write_text(json.dumps(m))
    path = tmp_path / "data" / "probe" / "chat.parquet"
    rows = _tables.read_rows(path, _tables.PROBE_SCHEMA)
    good = {"chat_ok": 1.0, "ended": 1.0, "no_turn_spill": 1.0, "not_verbatim": 1.0}
    for item, (q, answer, scores) in enumerate(
        [("Say hi.", "Hi!", good), ("Name a colour.", "Red, and then on and on", good | {"ended": 0.0, "chat_ok": 0.0})]
    ):
        rows.append({"task": "chat_behaviour", "type": "chat_behaviour", "item": item, "prompt": CHATML.format(q=q),
                     "reference": "", "prediction": answer, "scores": scores, "base_prediction": "Fine.",
                     "base_scores": good})  # fmt: skip
    _io.write_table(path, _tables.to_table(rows, _tables.PROBE_SCHEMA))
    md, _ = run_report(max_examples_per_task=2)
    assert "| `chat` | `chat_behaviour` | chat_behaviour | chat_ok ↑ | 1.000 | 0.500 | -0.500 |" in md
    section = md.split("### Chat behaviour")[1].split("### Side by side")[0]
    assert "| `chat` | `chat_behaviour` | `ended` | 2/2 | 1/2 | 1 |" in section
    assert "| `chat` | `chat_behaviour` | `not_verbatim` | 2/2 | 2/2 | 0 |" in section
    lines = [line for line in section.splitlines() if line.startswith("| 1 |") or line.startswith("| 0 |")]
    # the adapted model's failure first, the question without its template, and what it failed
    assert lines[0] == "| 1 | Name a colour. | Fine. | Red, and then on and on | did not end its turn |"
    assert lines[1] == "| 0 | Say hi. | Fine. | Hi! | — |"
    assert "`base`" not in section  # a variant without the task shows nothing
