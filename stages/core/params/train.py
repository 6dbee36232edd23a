"""``train.<variant>``: quantization, LoRA and the optimization schedule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stages.core.params.base import Section

QUANTIZATIONS = ("nf4_4bit", "int8", "none")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
# transformers' `optim` names that run here: the torch ones anywhere; bitsandbytes' 8-bit (and paged) ones on CUDA and,
# with bitsandbytes >= 0.49, on CPU too (a paged optimizer falls back to unpaged memory there, with a warning).
OPTIMIZERS = (
    "adamw_torch_fused",
    "adamw_torch",
    "adafactor",
    "sgd",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
)


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
    # Optimizer steps; 0: train `epochs` passes over the train split instead (exactly one of the two is set).
    max_steps: int = Field(ge=0)
    epochs: float = Field(ge=0, allow_inf_nan=False)
    optimizer: Literal[OPTIMIZERS]  # type: ignore[valid-type]
    weight_decay: float = Field(ge=0, allow_inf_nan=False)
    # the gradient norm clipped to; 0: no clipping
    max_grad_norm: float = Field(ge=0, allow_inf_nan=False)
    per_device_batch_size: int = Field(gt=0)
    gradient_accumulation_steps: int = Field(gt=0)
    log_every_steps: int = Field(gt=0)
    eval_every_steps: int = Field(gt=0)
    save_every_steps: int = Field(gt=0)
    # Which adapter the stage keeps: eval_loss (the saved checkpoint with the lowest validation loss) | last (the
    # adapter after the final step).
    select: Literal["eval_loss", "last"]
    # Evaluations in a row without a lower validation loss before training stops; 0 = never stop early.
    early_stopping_patience: int = Field(ge=0)
    # Checkpoints kept in --checkpoints (the best one is kept on top of these).
    max_checkpoints: int = Field(gt=0)
    use_gradient_checkpointing: bool
    num_processes: int = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> TrainSpec:
        if (self.max_steps > 0) == (self.epochs > 0):
            raise ValueError(
                f"set exactly one of max_steps ({self.max_steps}) and epochs ({self.epochs}), the other 0: "
                "max_steps: 100, epochs: 0 trains 100 optimizer steps; max_steps: 0, epochs: 20 trains 20 passes "
                "over the train split"
            )
        if self.select == "last" and self.early_stopping_patience:
            raise ValueError(
                f"early_stopping_patience ({self.early_stopping_patience}) stops on the validation loss, which "
                "select: last does not use: set it to 0, or select: eval_loss"
            )
        if self.save_every_steps % self.eval_every_steps:
            raise ValueError(
                f"save_every_steps ({self.save_every_steps}) must be a multiple of eval_every_steps "
                f"({self.eval_every_steps}): the best adapter is picked among saved checkpoints by their eval loss"
            )
        return self


# The type of the top-level key; what load() validates it against.
SECTION = dict[str, TrainSpec]
