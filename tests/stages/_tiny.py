"""Tiny tokenizers for the template and tokenize tests, saved as the checkpoint directories the stages read.

Both are byte-level BPE over a 300-token vocabulary (like SmolLM2's, so decoding gives back every byte):

* ``chat``: SmolLM2-like: ChatML chat template, EOS ``<|im_end|>``, nothing added before a text.
* ``base``: Gemma-like: no chat template, ``<bos>`` put before every text, EOS ``<eos>``, pad ``<pad>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Steep curates instruction data, deduplicates it and fine-tunes small language models.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "Paris is the capital of France; Berlin is the capital of Germany.",
] * 20


def _bpe(specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def chat_tokenizer(out: Path) -> Any:
    """A ChatML tokenizer saved to `out`; returns it."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    return fast


def base_tokenizer(out: Path) -> Any:
    """A tokenizer with no chat template that puts ``<bos>`` before every text, saved to `out`; returns it."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(["<pad>", "<eos>", "<bos>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(out)
    return fast


# --- params files -------------------------------------------------------------------------------------------------

PARAMS_YAML = Path(__file__).resolve().parents[2] / "params.yaml"
# The sections keyed by variant name: a params file must name the same variants under each.
PER_VARIANT = ("variants", "template", "tokenize", "train")


def write_params(path: Path, **sections: Any) -> Path:
    """Write a whole params file to `path`: the repo's params.yaml with the given top-level sections replaced.

    The stages validate the whole file, so a test states only the section(s) it is about. The per-variant sections
    it does not give keep only the variants the given ones name (``train={"chat": ...}`` drops ``base`` from
    variants, template and tokenize), so the variant names agree across the file. Returns `path`.
    """
    import copy

    import yaml

    raw = yaml.safe_load(PARAMS_YAML.read_text(encoding="utf-8"))
    unknown = sorted(set(sections) - set(raw))
    if unknown:
        raise KeyError(f"not sections of {PARAMS_YAML.name}: {unknown}")
    raw.update(copy.deepcopy(sections))
    names = {name for key in PER_VARIANT if key in sections for name in sections[key]}
    if names:
        for key in PER_VARIANT:
            if key not in sections:
                missing = sorted(names - set(raw[key]))
                if missing:
                    raise KeyError(f"{PARAMS_YAML.name} has no {key} entry for {missing}; give the {key} section too")
                raw[key] = {name: entry for name, entry in raw[key].items() if name in names}
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


# --- models -------------------------------------------------------------------------------------------------------


def word_tokenizer(vocab_size: int = 300) -> Any:
    """A word-level tokenizer over ``t3 .. t<vocab_size - 1>`` (id = the number), with ``<pad>``, ``<s>``, ``</s>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(out: Path, tokenizer: Any, *, seed: int = 0, max_positions: int = 1024, dtype: str = "float32") -> Path:
    """A random 2-layer LlamaForCausalLM (hidden 64) over `tokenizer`'s vocabulary, saved with it to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(cfg).to(getattr(torch, dtype)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
