"""The model a probe evaluates, and how a prompt reaches it.

The model: a base checkpoint in the probe precision (``train.load_base``'s quantizations), optionally with a LoRA
adapter. A prompt of a generated task (generation, knowledge, showcase) is rendered through the variant's template
(``alpaca``: ``prompts.without_input``; ``chat_template``: the tokenizer's chat template, ``prompts.system`` as
system turn when not empty, generation prompt added); for the alpaca format a generation is cut at ``"\\n### "`` or
``"\\n\\n\\n"`` (a new Alpaca section).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from stages.core.io import StageError
from stages.core.params.template import AlpacaPrompts, ChatPrompts
from stages.variant import lm as _lm

# Alpaca has no end-of-turn token: a model that goes on writes the next section.
ALPACA_STOP = ("\n### ", "\n\n\n")


@dataclass(frozen=True)
class Rendering:
    """How the variant renders a user turn: ``template.<variant>.format`` and ``.prompts`` (all a probe reads)."""

    format: str
    prompts: AlpacaPrompts | ChatPrompts


def template_keys(template: Rendering) -> dict[str, str]:
    """What :func:`render` and the stop strings read, and nothing else: the format, and alpaca's
    ``prompts.without_input`` or chat_template's ``prompts.system`` (the part of a cache key for prompts)."""
    prompt = template.prompts.without_input if template.format == "alpaca" else template.prompts.system
    return {"format": template.format, "prompt": prompt}


def load_model(model_dir: Path, adapter_dir: Path | None, precision: dict[str, str], device: str) -> Any:
    """The base checkpoint in `precision` (train.load_base: NF4 double quant, 8-bit or plain), plus the adapter."""

    if precision["quantization"] == "int8" and device != "cuda":
        raise StageError(
            "probe.precision as_trained resolves to train quantization 'int8', which bitsandbytes runs on CUDA only; "
            "on CPU set probe.precision to 4bit, bf16 or fp32"
        )
    # load_base reads only these two fields of a TrainSpec
    model = _lm.load_base(model_dir, SimpleNamespace(**precision), device, 0)
    if precision["quantization"] == "none":
        model = model.to(device)
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise StageError(f"{adapter_dir}: no adapter_config.json; run `dvc repro train` first")
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    model.eval()
    return model


def load_tokenizer(model_dir: Path) -> Any:
    """The checkpoint's tokenizer (as the template stage loads it), with a pad token (EOS when it has none)."""

    tok = _lm.load_tokenizer(Path(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def render(prompt: str, template: Rendering, tokenizer: Any) -> str:
    """A user prompt as the variant's model sees it: Alpaca's prompts.without_input, or the chat template."""
    if template.format == "alpaca":
        return template.prompts.without_input.format(instruction=prompt)
    if not tokenizer.chat_template:
        raise StageError(
            "template format chat_template: the tokenizer has no chat template; use a chat model or `format: alpaca`"
        )
    system = template.prompts.system
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer: Any, text: str, prefix: list[int]) -> list[int]:
    """Token ids of a rendered prompt: the tokenizer's leading specials (BOS) unless the text already has them."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if not prefix or ids[: len(prefix)] == prefix else prefix + ids


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to the first stop string (all of it when none occurs)."""
    ends = [i for s in stops if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text
