"""The probe engine shared by the baseline and probe stages: one model, the per-item results of tasks, the cache.

How each type's items are evaluated (its registry entry's ``evaluator``, ``stages/probe/types.py``), on one model
(a base checkpoint, optionally with a LoRA adapter, in the probe precision: ``stages/probe/model.py``):

* ``choices`` (multiple_choice, knowledge_mc): lm-evaluation-harness is the engine. A task YAML (``output_type:
  multiple_choice``, metrics acc and acc_norm, each choice scored after the task's delimiter, one space) is
  generated in a temporary folder over a JSONL of the items (the prompt with ``{question}`` filled in, the choices,
  the answer) and run through ``lm_eval.simple_evaluate`` on an ``HFLM`` wrapping the loaded model; the per-item
  acc / acc_norm are the harness's logged samples; knowledge_mc's p_right is the softmax of the logged
  log-likelihoods of the choices, at the right one.
* ``rolling`` (perplexity): the harness's ``loglikelihood_rolling`` through the same ``HFLM``: the summed negative
  log-likelihood (nats) of each text's tokens (the text tokenized without special tokens, the first token
  predicted from the model's BOS/prefix token), its token count and its UTF-8 byte count.
* ``generate`` (generation, knowledge): greedy decoding of at most ``max_new_tokens`` new tokens from the prompt
  (question) rendered through the variant's template; decoding stops at EOS (alpaca: at a new section). Scored by
  ``stages/probe/scorers.py``.
* showcase: greedy generations for ``probe.showcase_prompts`` (through the template), no scores.

Cache. Each task's per-item results are stored in ``--cache`` under a sha256 over what they depend on: the sha256
of every file of the model and adapter directories, the resolved precision and device, the batch size, the task's
type, fields and limit, the task file's sha256 (a harness task: its rendered items'), what its type's evaluator
reads (multiple_choice: the prompt; generated types: the template keys that render prompts and
``max_new_tokens``), the settings its registry entry names, the versions of the libraries that compute the
numbers, and :func:`stages.core.code.code_hash` of this module: the project source it runs (model loading, the
tokenizer helpers, the harness, the scorers, ...), so any edit of that code evaluates again. A hit is checked
before it is served (checksum, rows for exactly the task's items: ``stages/probe/cache.py``) and evaluates
nothing; adding a task evaluates only that task; when every task hits, no model is loaded.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stages.core import code as _code
from stages.core import io as _io
from stages.probe import behaviour as _behaviour
from stages.probe import cache as _cache
from stages.probe import scorers as _scorers
from stages.probe.cache import key
from stages.probe.harness import quiet_harness
from stages.probe.model import (
    ALPACA_STOP,
    cut_at_stop,
    encode_prompt,
    load_model,
    load_tokenizer,
    render,
    template_keys,
)
from stages.probe.settings import Settings
from stages.probe.tables import Row, round_score
from stages.probe.tasks import TaskData
from stages.probe.types import SHOWCASE
from stages.variant import lm as _lm

log = logging.getLogger("steep.probe")


@dataclass
class Engine:
    """One model (a base checkpoint, optionally with an adapter) and the evaluation of tasks on it.

    The model loads on first use, so that a run whose tasks all hit the cache loads nothing.
    """

    settings: Settings
    model_dir: Path
    adapter_dir: Path | None = None
    device: str = field(default_factory=_lm.device)

    @cached_property
    def model(self) -> Any:
        precision = self.settings.resolved_precision()
        log.info("loading %s%s (%s) on %s", self.model_dir, f" + {self.adapter_dir}" if self.adapter_dir else "",
                 ", ".join(f"{k} {v}" for k, v in precision.items()), self.device)  # fmt: skip
        return load_model(self.model_dir, self.adapter_dir, precision, self.device)

    @cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.model_dir)

    @cached_property
    def lm(self) -> Any:
        """The harness's HFLM around the loaded model (scores multiple_choice and perplexity)."""
        from lm_eval.models.huggingface import HFLM

        with quiet_harness():
            return HFLM(
                pretrained=self.model, tokenizer=load_tokenizer(self.model_dir), batch_size=self.settings.batch_size
            )

    # --- choices (multiple_choice) --------------------------------------------------------------------------------

    def choices(self, tasks: list[TaskData]) -> dict[str, list[Row]]:
        """Per-item rows of ``choices`` tasks (multiple_choice), all in one ``lm_eval.simple_evaluate`` call."""
        import yaml
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        with tempfile.TemporaryDirectory(prefix="steep-probe-") as tmp:
            names: dict[str, TaskData] = {}
            for t in tasks:
                harness_name = f"steep_{t.name}"
                names[harness_name] = t
                prompt = t.prompt or self.settings.multiple_choice_prompt
                data = Path(tmp) / f"{t.name}.jsonl"
                with data.open("w", encoding="utf-8") as f:
                    for index, it in t.items:
                        doc = {"item": index, "prompt": prompt.format(question=it["question"])}
                        doc |= {"choices": it["choices"], "answer": it["answer"]}
                        f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                config = {
                    "task": harness_name,
                    "dataset_path": "json",
                    # cache_dir: the datasets cache of this run only (nothing left in ~/.cache)
                    "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(Path(tmp) / "hf")},
                    "test_split": "test",
                    "output_type": "multiple_choice",
                    "doc_to_text": "prompt",
                    "doc_to_choice": "choices",
                    "doc_to_target": "answer",
                    "target_delimiter": t.delimiter,
                    "num_fewshot": 0,
                    "metric_list": [
                        {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
                    ],
                }
                (Path(tmp) / f"{harness_name}.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
            with quiet_harness():
                manager = TaskManager(include_path=tmp, include_defaults=False)
                results = simple_evaluate(
                    model=self.lm,
                    tasks=sorted(names),
                    task_manager=manager,
                    log_samples=True,
                    bootstrap_iters=0,
                    batch_size=self.settings.batch_size,
                )
        out: dict[str, list[Row]] = {}
        for harness_name, t in names.items():
            samples = sorted(results["samples"][harness_name], key=lambda s: s["doc_id"])
            rows = []
            for s in samples:
                doc = s["doc"]
                lls = [r[0] for r in s["filtered_resps"]]
                scores = {"acc": float(s["acc"]), "acc_norm": float(s["acc_norm"])}
                if "p_right" in t.spec.item_scores:  # softmax of the choices' log-likelihoods, at the right one
                    p = np.exp(np.asarray(lls, dtype=np.float64) - max(lls))
                    scores["p_right"] = round_score(float(p[doc["answer"]] / p.sum()))
                rows.append(
                    {
                        "item": doc["item"],
                        "prompt": s["arguments"][0][0],
                        "reference": doc["choices"][doc["answer"]],
                        "prediction": doc["choices"][int(np.argmax(lls))],
                        "scores": scores,
                    }
                )
            if [r["item"] for r in rows] != [i for i, _ in t.items]:
                raise RuntimeError(f"broken invariant: the harness returned other items for task {t.name}")
            out[t.name] = rows
        return out

    # --- rolling (perplexity) -------------------------------------------------------------------------------------

    def rolling(self, task: TaskData) -> list[Row]:
        """Per-item summed NLL (nats), token and byte counts through the harness's ``loglikelihood_rolling``."""
        from lm_eval.api.instance import Instance

        lm = self.lm
        texts = [it["text"] for _, it in task.items]
        requests = [
            Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=0, metadata=(task.name, i, 1))
            for i, t in enumerate(texts)
        ]
        # The text's own tokens only: a tokenizer that puts BOS before every text (Gemma) would otherwise have the
        # harness score predicting BOS after its BOS prefix token.
        saved, lm.add_bos_token = lm.add_bos_token, False
        try:
            with quiet_harness():
                lls = lm.loglikelihood_rolling(requests, disable_tqdm=False)
        finally:
            lm.add_bos_token = saved
        rows = []
        for (index, _), text, ll in zip(task.items, texts, lls, strict=True):
            tokens = len(lm.tok_encode(text, add_special_tokens=False))
            scores = {"nll": round_score(-ll), "tokens": float(tokens), "bytes": float(len(text.encode("utf-8")))}
            rows.append({"item": index, "prompt": text, "reference": "", "prediction": "", "scores": scores})
        return rows

    # --- generate (generation, knowledge, showcase) ---------------------------------------------------------------

    @cached_property
    def end_ids(self) -> set[int]:
        """The tokens that end an answer: the tokenizer's EOS, the generation config's, the template's end of turn."""
        tok = self.tokenizer
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        cfg_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos |= set(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos] if cfg_eos is not None else [])
        return eos | _behaviour.end_of_turn_ids(self.settings.template.format, tok)

    def _generate(self, prompts: list[str], desc: str) -> tuple[list[str], list[list[int]]]:
        """Greedy decoding of user prompts rendered through the template: (rendered prompts, new token ids each).

        Decoding stops at an end token (:attr:`end_ids`), at an Alpaca stop string, or after max_new_tokens.
        """
        import torch
        from transformers import GenerationConfig

        tok = self.tokenizer
        rendered = [render(p, self.settings.template, tok) for p in prompts]
        prefix = _lm.leading_specials(tok)
        enc = [encode_prompt(tok, r, prefix) for r in rendered]
        model, eos = self.model, self.end_ids
        stops = ALPACA_STOP if self.settings.template.format == "alpaca" else ()
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=self.settings.max_new_tokens,
            eos_token_id=sorted(eos),
            pad_token_id=tok.pad_token_id,
            stop_strings=list(stops) or None,
        )
        # longest first (less padding per batch); results go back to prompt order
        order = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))
        out: list[list[int]] = [[] for _ in enc]
        bs = self.settings.batch_size
        bar = tqdm(total=len(order), desc=desc, unit="item", mininterval=2, disable=None)
        for start in range(0, len(order), bs):
            batch = order[start : start + bs]
            width = max(len(enc[i]) for i in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):  # left padding: every prompt ends where generation starts
                ids[r, width - len(enc[i]) :] = torch.tensor(enc[i])
                mask[r, width - len(enc[i]) :] = 1
            with torch.no_grad():
                gen = model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=config,
                    tokenizer=tok if stops else None,
                )
            for r, i in enumerate(batch):
                new = gen[r, width:].tolist()
                end = next((k for k, t in enumerate(new) if t in eos), None)
                # up to and with the first end token; a row cut by a stop string or the budget ends in padding
                out[i] = new[: end + 1] if end is not None else new
            bar.update(len(batch))
        bar.close()
        return rendered, out

    def generate(self, prompts: list[str], desc: str) -> tuple[list[str], list[str]]:
        """Greedy generations for user prompts rendered through the template; returns (rendered, generated)."""
        rendered, new = self._generate(prompts, desc)
        stops = ALPACA_STOP if self.settings.template.format == "alpaca" else ()
        eos = self.end_ids
        texts = [self.tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True) for ids in new]
        return rendered, [cut_at_stop(t, stops).strip() for t in texts]

    def generated(self, task: TaskData) -> list[Row]:
        """Per-item rows of a task of a generated type (generation, knowledge): greedy generations, scored."""
        spec = task.spec
        if spec.documents:
            return self.behaviour(task)
        question = spec.fields[0]  # the prompt (generation) or the question (knowledge)
        refs = [spec.reference_of(it) for _, it in task.items]
        rendered, preds = self.generate([it[question] for _, it in task.items], desc=task.name)
        scores = _scorers.GENERATED[spec.name](preds, refs, self.settings.bertscore_model)
        return [
            {"item": index, "prompt": prompt, "reference": ref, "prediction": pred, "scores": sc}
            for (index, _), prompt, ref, pred, sc in zip(task.items, rendered, refs, preds, scores, strict=True)
        ]

    def behaviour(self, task: TaskData) -> list[Row]:
        """Per-item rows of a chat_behaviour task: each answer as generated (special tokens kept), and its checks."""
        rendered, new = self._generate([it["prompt"] for _, it in task.items], desc=task.name)
        return _behaviour.rows(task, rendered, new, self.end_ids, self.tokenizer, self.settings.template)

    def showcase(self) -> list[Row]:
        """Greedy generations for the showcase prompts (no scores)."""
        rendered, preds = self.generate(list(self.settings.showcase_prompts), desc=SHOWCASE)
        return [
            {"item": i, "prompt": r, "reference": "", "prediction": p, "scores": {}}
            for i, (r, p) in enumerate(zip(rendered, preds, strict=True))
        ]

    # --- cache keys -----------------------------------------------------------------------------------------------

    @cached_property
    def fingerprint(self) -> str:
        return _io.fingerprint(self.model_dir, self.adapter_dir)

    @cached_property
    def code(self) -> str:
        """The hash of the project source this module runs (its import closure): what computes the results."""
        return _code.code_hash(__name__)

    def _base_key(self) -> dict[str, Any]:
        s = self.settings
        return {
            "code": self.code,
            "model": self.fingerprint,
            "precision": s.resolved_precision(),
            "device": self.device,
            "batch_size": s.batch_size,
        }

    def _generation_key(self) -> dict[str, Any]:
        s = self.settings
        return {"template": template_keys(s.template), "max_new_tokens": s.max_new_tokens}

    def task_key(self, t: TaskData) -> str:
        """The cache key of a task's per-item results (only what changes them, as its type says)."""
        spec = t.spec
        entry = {"type": t.type, "fields": dict(sorted((t.task.fields or {}).items())), "file": t.sha256}
        if spec.documents:
            entry |= {"documents": key({"documents": list(t.documents)}), "words": t.task.min_verbatim_words}
        if t.task.limit is not None:
            entry["limit"] = t.task.limit
        payload = self._base_key() | {"task": entry}
        if spec.evaluator == "choices":
            payload["prompt"] = t.prompt or self.settings.multiple_choice_prompt
        if spec.evaluator == "generate":
            payload |= self._generation_key()
        payload["settings"] = {k: getattr(self.settings, k) for k in spec.settings}
        return key(payload)

    def showcase_key(self) -> str:
        return key(self._base_key() | self._generation_key() | {"showcase": list(self.settings.showcase_prompts)})


def evaluate(engine: Engine, tasks: list[TaskData], cache_dir: Path) -> tuple[list[Row], dict[str, int]]:
    """Evaluate every task (and the showcase prompts) on the engine's model, through the per-task cache.

    Returns:
        The per-item rows of every task and of the showcase (columns of ``tables.SCHEMA``, scores as dicts), sorted by
        (task, item); and ``{"tasks_evaluated": n, "tasks_cached": n}`` (probe tasks only, not the showcase).
    """
    cache = _cache.results_cache(cache_dir, __name__)  # task key -> the task's per-item rows, checked
    done: dict[str, list[Row]] = {}
    todo: list[TaskData] = []
    keys = {t.name: engine.task_key(t) for t in tasks}
    for t in tasks:
        hit = _cache.hit(cache, t.name, keys[t.name], [i for i, _ in t.items])
        if hit is None:
            todo.append(t)
        else:
            done[t.name] = hit
            log.info("%s: cached", t.name)
    mc = [t for t in todo if t.spec.evaluator == "choices"]
    if mc:
        log.info("multiple choice through lm-evaluation-harness: %s", ", ".join(t.name for t in mc))
        start = time.perf_counter()
        for name, rows in engine.choices(mc).items():
            cache.put(keys[name], rows)
            done[name] = rows
        log.info("multiple choice done in %.1f s", time.perf_counter() - start)
    for t in [t for t in todo if t.spec.evaluator != "choices"]:
        log.info("%s: evaluating %d items (%s)", t.name, len(t.items), t.type)
        start = time.perf_counter()
        rows = engine.rolling(t) if t.spec.evaluator == "rolling" else engine.generated(t)
        cache.put(keys[t.name], rows)
        done[t.name] = rows
        log.info("%s: done in %.1f s", t.name, time.perf_counter() - start)
    showcase: list[Row] = []
    if engine.settings.showcase_prompts:
        key = engine.showcase_key()
        hit = _cache.hit(cache, SHOWCASE, key, list(range(len(engine.settings.showcase_prompts))))
        if hit is None:
            start = time.perf_counter()
            hit = engine.showcase()
            cache.put(key, hit)
            log.info("showcase: %d generations in %.1f s", len(hit), time.perf_counter() - start)
        showcase = hit
    rows = [{"task": t.name, "type": t.type, **r} for t in tasks for r in done[t.name]]
    rows += [{"task": SHOWCASE, "type": SHOWCASE, **r} for r in showcase]
    rows.sort(key=lambda r: (r["task"], r["item"]))
    return rows, {"tasks_evaluated": len(todo), "tasks_cached": len(tasks) - len(todo)}
