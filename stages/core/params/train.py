"""``train.<variant>``: quantization, LoRA and the optimization schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.core.params.base import Section

QUANTIZATIONS = ("nf4_4bit", "int8", "none")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


class TrainSpec(Section):
    """``train.<variant>``: how the adapter is trained."""

    quantization: Literal[QUANTIZATIONS]  # type: ignore[valid-type]
    compute_dtype: Literal["float32", "bfloat16"]
    lora_rank: int = Field(gt=0)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = Field(min_length=1)
    learning_rate: float = Field(gt=0)
    lr_scheduler: Literal[SCHEDULERS]  # type: ignore[valid-type]
    warmup_ratio: float = Field(ge=0, lt=1)
    max_steps: int = Field(gt=0)
    per_device_batch_size: int = Field(gt=0)
    gradient_accumulation_steps: int = Field(gt=0)
    log_every_steps: int = Field(gt=0)
    eval_every_steps: int = Field(gt=0)
    save_every_steps: int = Field(gt=0)
    # Evaluations in a row without a lower validation loss before training stops; 0 = never stop early.
    early_stopping_patience: int = Field(ge=0)
    # Checkpoints kept in --checkpoints (the best one is kept on top of these).
    max_checkpoints: int = Field(gt=0)
    use_gradient_checkpointing: bool
    num_processes: int = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> TrainSpec:
        if self.save_every_steps % self.eval_every_steps:
            raise ValueError(
                f"save_every_steps ({self.save_every_steps}) must be a multiple of eval_every_steps "
                f"({self.eval_every_steps}): the best adapter is picked among saved checkpoints by their eval loss"
            )
        return self


# The type of the top-level key; what load() validates it against.
SECTION = dict[str, TrainSpec]
