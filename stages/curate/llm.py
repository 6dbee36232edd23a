"""Running the local LLM of the synthesize stage: loading it, seeded sampling, and generating completions.

A shared module, not a stage, and the code that computes the completions synthesize caches: the cache is keyed on
:func:`stages.core.code.code_hash` of this module (its import closure), so an edit here generates again, while an
edit of how prompts are built or completions parsed (``stages/curate/generation.py``, ``stages/curate/pairs.py``)
does not. Sampling draws each row from its own seed, so that a call's output does not depend on the other calls of
its batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from stages.core.params.synthesize import Generation

# Where a completion ends: the model starting the next few-shot example (a new text, question or task) or a
# heading of its own. Generation stops there, and the parser ignores anything after. One set for every call, so
# that a row's stopping does not depend on the other calls of its batch.
STOP = ("\nText:", "\nQuestion:", "\nInstruction:", "\n#")


class Prompt(Protocol):
    """What :func:`generate` reads of a call (a :class:`stages.curate.generation.Call`)."""

    @property
    def prompt(self) -> str: ...

    @property
    def seed(self) -> int: ...


P = TypeVar("P", bound=Prompt)


def _seeded_sampler(seeds: list[int], gen: Generation) -> Any:
    """A logits processor that samples each row from its own seeded generator (Gumbel-max over warped logits).

    Greedy decoding over ``warped logits + Gumbel noise`` draws exactly from the warped distribution, and each row's
    noise comes from its own ``torch.Generator``: a row's tokens do not depend on the other rows of the batch.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList([TemperatureLogitsWarper(gen.temperature)])
    if gen.min_p > 0:
        warpers.append(MinPLogitsWarper(gen.min_p))
    if gen.top_p < 1:
        warpers.append(TopPLogitsWarper(gen.top_p))

    class SeededSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators = [torch.Generator().manual_seed(s) for s in seeds]

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            # scores: (B, V) next-token logits
            warped = warpers(input_ids, scores.float())
            u = torch.stack([torch.rand(warped.shape[1], generator=g) for g in self.generators])
            gumbel = -torch.log(-torch.log(u.clamp_(1e-12, 1 - 1e-7)))
            return warped + gumbel.to(warped.device)

    return SeededSampler()


def load_generator(model_dir: Path, dtype: str) -> tuple[Any, Any]:
    """The generator model (eval mode) and its tokenizer, left-padded for batched generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), trust_remote_code=False)
    model.eval()
    return model, tok


def generate(model: Any, tok: Any, calls: Sequence[P], gen: Generation) -> Iterator[tuple[P, dict[str, Any]]]:
    """Complete every call, ``batch_size`` at a time; yields (call, {completion, new_tokens, finished}) per call.

    ``finished`` is false when the completion ran into ``max_new_tokens`` (its last pair may be cut off).
    """
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=gen.max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        stop_strings=list(STOP),
    )
    bar = tqdm(total=len(calls), desc="synthesize: generating", unit="call")
    for start in range(0, len(calls), gen.batch_size):
        batch = calls[start : start + gen.batch_size]
        texts = [
            tok.apply_chat_template([{"role": "user", "content": c.prompt}], tokenize=False, add_generation_prompt=True)
            if gen.use_chat_template
            else c.prompt
            for c in batch
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not gen.use_chat_template)
        with torch.no_grad():
            out = model.generate(
                **enc,
                generation_config=config,
                logits_processor=[_seeded_sampler([c.seed for c in batch], gen)],
                tokenizer=tok,
            )
        new = out[:, enc["input_ids"].shape[1] :]  # (B, T_new), right-padded with pad ids once a row is done
        for call, row in zip(batch, new, strict=True):
            ids = row.tolist()
            stop_at = next((i for i, t in enumerate(ids) if t in (tok.eos_token_id, tok.pad_token_id)), None)
            kept = ids if stop_at is None else ids[:stop_at]
            text = tok.decode(kept, skip_special_tokens=True)
            finished = stop_at is not None or any(s in text for s in STOP)
            yield call, {"completion": text, "new_tokens": len(kept), "finished": finished}
        bar.update(len(batch))
    bar.close()
