"""Settings of the alignment stages (pydantic, ``extra="forbid"``), kept free of torch so a recipe can be
validated before anything heavy imports.

Each stage reads its OWN data (``data:``, preference or prompt files in the formats of
:mod:`herd.align.preference`), with a deterministic held-out split (``eval_size`` records chosen by
content hash with ``split_seed``). Defaults are the published Llama 2 settings (dossier §5.2) where the
paper gives them; a recipe's profile overrides them like any stage's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from herd.recipe import DataSource, LoraSpec, SFTStage


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _PairTraining(_Strict):
    """What the reward-model and DPO stages share: their data, the held-out split, the optimiser."""

    data: list[DataSource] = Field(min_length=1)
    eval_size: int = Field(default=50, ge=0)  # held-out pairs (accuracy/margins in the summary)
    split_seed: int = 42
    max_train_pairs: int | None = Field(default=None, gt=0)
    max_len: int = Field(default=1024, ge=16)  # pairs whose longer side exceeds this are dropped, counted
    lr: float = Field(default=1e-5, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    global_batch: int = Field(default=64, gt=0)  # PAIRS per optimizer step
    micro_batch: int = Field(default=4, gt=0)  # pairs per forward/backward
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    min_warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)  # cosine floor as a fraction of lr
    weight_decay: float = Field(default=0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(default=1e-8, gt=0)
    grad_clip: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: int = Field(default=0, ge=0)  # optimizer steps; 0 = none
    eval_batch: int = Field(default=8, gt=0)  # pairs per scoring forward on held-out data
    seed: int = 42


class RewardModelStage(_PairTraining):
    """A scalar reward head on the parent (LM head → regression head), trained with the Bradley-Terry
    loss and Llama 2's optional rating margin. Defaults: §5.2 step 3 (1 epoch, lr 1e-5 for models
    below 70B, cosine to 10 %, warmup 3 % of steps but at least 5, batch 512 pairs) and the base
    model's optimiser (AdamW β 0.9/0.95, eps 1e-5, weight decay 0.1, clip 1.0; Llama 2 §2.2)."""

    name: str = "reward_model"
    kind: Literal["reward_model"] = "reward_model"
    margin: Literal["none", "small", "large"] = "none"  # Table 27 scheme; pairs without a rating get 0
    lr: float = Field(default=1e-5, gt=0)
    global_batch: int = Field(default=512, gt=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    min_warmup_steps: int = Field(default=5, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.1, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = Field(default=1e-5, gt=0)


class DPOStage(_PairTraining):
    """Direct Preference Optimization against the frozen parent (Rafailov et al. 2023): the paper's
    β 0.1, lr 1e-6 with linear warmup (150 steps there; 10 % here), batch 64, RMSprop there / AdamW here."""

    name: str = "dpo"
    kind: Literal["dpo"] = "dpo"
    beta: float = Field(default=0.1, gt=0)
    method: Literal["full", "lora"] = "full"
    lora: LoraSpec = LoraSpec()
    lr: float = Field(default=1e-6, gt=0)
    global_batch: int = Field(default=64, gt=0)
    micro_batch: int = Field(default=2, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)


class RejectionSamplingStage(_Strict):
    """Llama 2's rejection-sampling fine-tuning (§5.2 step 4): K replies per prompt from the parent,
    scored by the reward model(s), the best kept and trained on with herd's SFT engine (``sft``)."""

    name: str = "rejection_sampling"
    kind: Literal["rejection_sampling"] = "rejection_sampling"
    data: list[DataSource] = Field(min_length=1)  # prompts: any preference/KTO file, or SFT formats
    eval_size: int = Field(default=20, ge=0)  # held-out prompts: mean reward of parent vs result
    split_seed: int = 42
    max_prompts: int | None = Field(default=None, gt=0)
    # a reward-model artifact folder, or the name of an earlier stage of this derivation
    reward_model: str
    safety_reward_model: str | None = None  # with it, Rc = Rs if safety prompt or Rs < threshold else Rh
    safety_threshold: float = Field(default=0.15, gt=0, lt=1)
    k: int = Field(default=4, ge=1)  # samples per prompt (the paper: 10-100)
    temperature: float = Field(default=1.0, gt=0)  # the paper: 1.2-1.3 for its RLHF models
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=256, gt=0)
    gen_batch: int = Field(default=8, gt=0)
    score_batch: int = Field(default=8, gt=0)
    seed: int = 0
    sft: SFTStage = SFTStage(name="sft", epochs=1.0)  # how the kept replies are trained
