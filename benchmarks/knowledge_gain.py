"""Knowledge gain: the chat variant trained on steep's own documents (plain text, many passes) plus replay.

The experiment of docs/knowledge.md's "Knowledge gain: the experiment": the chat variant (SmolLM2-135M-Instruct) with
``template.chat.documents_as: text`` (the 8 documents of ``data/sources/docs`` as plain causal-LM text, cut into
``tokenize.chat.max_tokens`` blocks), the documents repeated ``P`` times by the tokenize stage's mixture
(``tokenize.chat.mixture.kinds.document: P``: P passes over them) beside one pass over the curated instruction and
conversation records and synthesize's document pairs (the replay), one epoch over that mixture, evaluated by the
baseline and probe stages: every probe task, base vs adapted, with its delta, paired 95% interval and verdict.

It runs the stages the command ``dvc exp run -S ...`` (printed, and kept in the results) reruns -- template@chat,
tokenize@chat, train@chat, baseline@chat, probe@chat -- with their dvc.yaml command lines and a copy of the project's
``params.yaml`` with the same overrides, into a work folder instead of the workspace. The stage inputs
(``data/curated.parquet``, ``data/synthetic.parquet``, ``models/chat/base``) are the project's DVC outputs
(``dvc checkout``, or ``dvc repro synthesize models@chat`` first). One training of one epoch over the mixture,
with ``--points`` evaluations and saves evenly spaced (``max_steps`` = points x ``save_every_steps``, at most
points - 1 steps past the epoch), no early stopping: the train stage keeps the checkpoint of best validation loss
(its validation split holds instruction records only), which gets every probe task; every checkpoint, hard-linked as
the stage saves it (the stage removes them when it ends), gets ``steep_knowledge`` alone: the knowledge score
against passes over the documents.

Run (from the project root)::

    nice -n 5 .venv/bin/python benchmarks/knowledge_gain.py --passes 12 --points 3 \
        --set tokenize.chat.mixture.kinds.instruction 0.5 --threads 2    # README's run: 54 min on 2 busy cores
    .venv/bin/python benchmarks/knowledge_gain.py --passes 1 --points 2 --quick   # plumbing: 2 steps

``--threads 1`` on a shared machine: with two torch threads per process on two busy cores, steps stall (one thread
waits on a descheduled peer) and training ran at 5-10 tokens/s here, against ~100 with one.

Writes ``benchmarks/results/knowledge_gain.json`` (``--out``; after the full probe and after every curve point) and
prints the table and the curve.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.probe.types import MAIN_METRIC  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "knowledge_gain.json"
VARIANT = "chat"
MODEL = "models/chat/base"  # the models stage's output (dvc.yaml)
THREADS = 0  # --threads: torch/OpenMP threads of every stage (0: torch's default, one per core)
PROBE_CACHE = ".steep_cache/probe"  # the probe stages' per-task cache: the baseline is evaluated once

# The experiment's params, as `dvc exp run -S` takes them (besides the pass count and the step count, set per run).
# quantization none: plain LoRA on the float32 weights (no NF4 dequantization in every step on a CPU, where
# bitsandbytes has no fused kernels); the probe evaluates in the precision the variant trained in (probe.precision).
# r 32 / alpha 64 and lr 5e-4: more capacity and a larger step than the demo's r 8 / 3e-4, for facts to stick.
OVERRIDES: dict[str, Any] = {
    "template.chat.documents_as": "text",
    "train.chat.quantization": "none",
    "train.chat.lora_rank": 32,
    "train.chat.lora_alpha": 64,
    "train.chat.learning_rate": 0.0005,
    "train.chat.max_steps": 0,
    "train.chat.epochs": 1,
    "train.chat.early_stopping_patience": 0,
}


def set_key(params: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in the nested `params` (the key must exist, except under an empty or open mapping)."""
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise SystemExit(f"params has no mapping at {dotted!r} ({part!r})")
        node = node[part]
    node[last] = value


def exp_line(overrides: dict[str, Any]) -> str:
    """The ``dvc exp run`` command with these overrides (Hydra's ``++``: set, or add a key params.yaml lacks)."""
    parts = []
    for key, value in overrides.items():
        plus = "++" if key.startswith("tokenize.chat.mixture.") else ""
        parts.append(f"-S '{plus}{key}={json.dumps(value) if not isinstance(value, str) else value}'")
    return "dvc exp run " + " ".join(parts)


def run_stage(module: str, params: Path, flags: dict[str, Any], log: Path) -> float:
    """Run ``python -m stages.<module> --<flag> <path(s)>...`` (its dvc.yaml command line) from the project root.

    Returns:
        Its wall seconds.
    """
    cmd = [sys.executable, "-m", f"stages.{module}", "--params", str(params), "--variant", VARIANT]
    for flag, value in flags.items():
        cmd += [f"--{flag}", *(str(v) for v in (value if isinstance(value, list) else [value]))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    env |= {"OMP_NUM_THREADS": str(THREADS)} if THREADS else {}
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    if code:
        raise SystemExit(f"{module} failed (exit {code}); see {log}")
    return round(time.perf_counter() - t0, 1)


def write_params(base: dict[str, Any], overrides: dict[str, Any], path: Path) -> None:
    params = copy.deepcopy(base)
    for key, value in overrides.items():
        set_key(params, key, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def probe_table(probe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: main metric, base, adapted, delta, interval, verdict (from ``metrics/probe_chat.json``'s shape)."""
    table = {}
    for task, m in probe.items():
        if not isinstance(m, dict) or "type" not in m:
            continue
        main = MAIN_METRIC[m["type"]]
        verdict = "forgetting" if m["forgetting"] else "gain" if m["gain"] else "no change"
        table[task] = {"metric": main, **{k: m[main][k] for k in ("base", "adapted", "delta", "ci_low", "ci_high")}}
        table[task]["verdict"] = verdict
    return table


class CheckpointCopier(threading.Thread):
    """Copies every complete ``checkpoint-<step>`` the train stage saves (it rotates and finally removes them)."""

    def __init__(self, src: Path, dst: Path):
        super().__init__(daemon=True)
        self.src, self.dst, self.done = src, dst, threading.Event()

    def copy_new(self) -> None:
        for ckpt in sorted(self.src.glob("checkpoint-*")):
            target = self.dst / ckpt.name
            # trainer_state.json is the last file a save writes
            if target.exists() or not (ckpt / "trainer_state.json").is_file():
                continue
            tmp = self.dst / f".{ckpt.name}"
            tmp.mkdir(parents=True, exist_ok=True)
            for name in ("adapter_config.json", "adapter_model.safetensors", "trainer_state.json"):
                os.link(ckpt / name, tmp / name)  # instant, and it outlives the stage's clean-up
            tmp.rename(target)

    def run(self) -> None:
        # the last checkpoint lives for a moment only: the stage removes the folder once the best is saved
        while not self.done.wait(0.2):
            # a checkpoint rotated away while being read was copied before
            with contextlib.suppress(FileNotFoundError):
                self.copy_new()


def train_run(passes: int, base: dict[str, Any], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Tokenize with `passes` passes over the documents, train, keep a copy of every checkpoint."""
    overrides = {**OVERRIDES, **dict(args.set), "tokenize.chat.mixture.kinds.document": passes}
    overrides.update({"tokenize.chat.mixture.sources.synthetic_documents": passes} if args.qa_passes else {})
    params = work / "params.yaml"
    write_params(base, overrides, params)
    walls = {}
    walls["tokenize"] = run_stage(
        "variant.tokenize",
        params,
        {"in": work / "templated.parquet", "model": MODEL, "out": work / "tokenized"}
        | {"metrics": work / "tokenize.json"},
        work / "log.txt",
    )
    tok = json.loads((work / "tokenize.json").read_text())
    batch = base["train"][VARIANT]["per_device_batch_size"] * base["train"][VARIANT]["gradient_accumulation_steps"]
    epoch_steps = math.ceil(tok["train_sequences"] / batch)
    # `points` evaluations and saves, evenly spaced; max_steps a multiple of them (>= one epoch by < points steps)
    every = 1 if args.quick else math.ceil(epoch_steps / args.points)
    steps = every * args.points
    overrides |= {"train.chat.max_steps": steps, "train.chat.epochs": 0}
    overrides |= {"train.chat.eval_every_steps": every, "train.chat.save_every_steps": every}
    write_params(base, overrides, params)
    copier = CheckpointCopier(work / "checkpoints", work / "curve")
    copier.start()
    try:
        walls["train"] = run_stage(
            "variant.train",
            params,
            {"model": MODEL, "data": work / "tokenized", "out": work / "adapter", "checkpoints": work / "checkpoints"}
            | {"metrics": work / "train.json", "live": work / "live"},
            work / "log.txt",
        )
    finally:
        copier.done.set()
        copier.join()
    train = json.loads((work / "train.json").read_text())
    return {
        "passes": passes,
        "command": exp_line(overrides),
        "overrides": overrides,
        "epoch_steps": epoch_steps,
        "tokenize": tok,
        "train": train,
        "wall_s": walls,
    }


def probe(params: Path, adapter: Path, baseline: Path, out: Path, log: Path) -> tuple[dict[str, Any], float]:
    """The probe stage on `adapter`: its per-task table and wall seconds."""
    wall = run_stage(
        "probe.probe",
        params,
        {"model": MODEL, "adapter": adapter, "baseline": baseline, "out": out / "probe.parquet"}
        | {"metrics": out / "probe.json", "cache": PROBE_CACHE},
        log,
    )
    return probe_table(json.loads((out / "probe.json").read_text())), wall


def print_table(table: dict[str, dict[str, Any]]) -> None:
    print("| task | metric | base | adapted | delta | 95% interval | verdict |\n|---|---|---|---|---|---|---|")
    for task, t in table.items():
        print(
            f"| {task} | {t['metric']} | {t['base']:.3f} | {t['adapted']:.3f} | {t['delta']:+.3f} | "
            f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}] | {t['verdict']} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--passes", type=int, default=8, help="passes over the documents (their mixture repeat factor)")
    ap.add_argument("--points", type=int, default=4, help="evaluations (and checkpoints) over the run: the curve")
    ap.add_argument(
        "--qa-passes",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="repeat synthesize's document pairs as often as the documents (off: most are wrong, benchmarks/README)",
    )
    ap.add_argument(
        "--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="a further override (YAML)"
    )
    ap.add_argument("--workdir", type=Path, help="keep the run here (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="a checkpoint every step: a plumbing check")
    ap.add_argument("--curated", type=Path, default=Path("data/curated.parquet"), help="dedup's output")
    ap.add_argument("--synthetic", type=Path, default=Path("data/synthetic.parquet"), help="synthesize's output")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the stages (1 on a loaded machine)")
    args = ap.parse_args()
    global THREADS
    THREADS = args.threads
    args.set = [(k, yaml.safe_load(v)) for k, v in args.set]
    base = yaml.safe_load(args.params.read_text())
    work = args.workdir or Path(tempfile.mkdtemp(prefix="knowledge_gain_"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    print(f"work folder {work}", flush=True)

    t0 = time.perf_counter()
    params = work / "params.yaml"
    write_params(base, {**OVERRIDES, **dict(args.set)}, params)
    walls = {
        "template": run_stage(
            "variant.template",
            params,
            {"in": [args.curated, args.synthetic], "model": MODEL, "out": work / "templated.parquet"}
            | {"metrics": work / "template.json"},
            log,
        ),
        # the pretrained model, in the precision it trains in; per-task results cached in .steep_cache/probe
        "baseline": run_stage(
            "probe.baseline",
            params,
            {"model": MODEL, "out": work / "baseline.parquet", "metrics": work / "baseline.json", "cache": PROBE_CACHE},
            log,
        ),
    }
    run = train_run(args.passes, base, work, args)
    walls.update(run["wall_s"])
    print(f"the experiment: {run['command']}", flush=True)
    # the curve: steep_knowledge only, at every checkpoint the run saved
    kparams = work / "params_knowledge.yaml"
    kbase = yaml.safe_load(params.read_text())
    kbase["probe"]["tasks"] = [t for t in kbase["probe"]["tasks"] if t["type"] == "knowledge"]
    kparams.write_text(yaml.safe_dump(kbase, sort_keys=False))
    kbaseline = work / "baseline_knowledge.parquet"  # the probe stage wants the baseline of exactly its tasks
    walls["baseline_knowledge"] = run_stage(
        "probe.baseline",
        kparams,
        {"model": MODEL, "out": kbaseline, "metrics": work / "baseline_knowledge.json", "cache": PROBE_CACHE},
        log,
    )
    # the stage's adapter (best validation loss among the checkpoints), every probe task (--quick: knowledge only)
    full = (kparams, kbaseline) if args.quick else (params, work / "baseline.parquet")
    table, walls["probe"] = probe(full[0], work / "adapter", full[1], work, log)
    print_table(table)

    steps = run["overrides"]["train.chat.max_steps"]
    curve: list[dict[str, Any]] = []

    def save() -> None:  # after the full probe and after every point: a cut-short run keeps what it measured
        walls["total"] = round(time.perf_counter() - t0, 1)
        result = {
            "model": base["variants"][VARIANT]["model"]["source"],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
            "load_average_1min": round(os.getloadavg()[0], 1),
            "quick": args.quick,
            "command": run["command"],
            "passes": args.passes,
            "qa_passes": args.qa_passes,
            "template": json.loads((work / "template.json").read_text()),
            "tokenize": run["tokenize"],
            "train": run["train"],
            "table": table,
            "curve": curve,
            "wall_s": walls,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    save()
    for ckpt in sorted((work / "curve").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(ckpt.name.split("-")[1])
        state = json.loads((ckpt / "trainer_state.json").read_text())
        evals = [e["eval_loss"] for e in state["log_history"] if e.get("step") == step and "eval_loss" in e]
        if step == run["train"]["best_step"]:  # the stage's adapter: probed above
            k = table
        else:
            k, walls[f"probe_knowledge_{step}"] = probe(kparams, ckpt, kbaseline, ckpt, log)
        curve.append(
            {"step": step, "passes_seen": round(args.passes * step / steps, 2)}
            | {"eval_loss": evals[0] if evals else None, "knowledge": k["steep_knowledge"]}
        )
        print(f"step {step} (~{curve[-1]['passes_seen']} passes): {k['steep_knowledge']}", flush=True)
        save()
    print("\n## knowledge (contains) against passes")
    for c in curve:
        k = c["knowledge"]
        print(
            f"step {c['step']:>4} ({c['passes_seen']:>5} passes), eval loss {c['eval_loss']}: "
            f"{k['base']:.3f} -> {k['adapted']:.3f} [{k['ci_low']:+.3f}, {k['ci_high']:+.3f}]"
        )
    print(f"wrote {args.out} ({walls['total']} s)")


if __name__ == "__main__":
    main()
