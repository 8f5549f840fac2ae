"""Settings of the alignment stages (pydantic, ``extra="forbid"``), kept free of torch so a recipe can be
validated before anything heavy imports.

Each stage reads its OWN data (``data:``, preference or prompt files in the formats of
:mod:`herd.data.readers.preference`), with a deterministic held-out split (``eval_size`` records chosen by
content hash with ``split_seed``). Defaults are the published Llama 2 settings (dossier §5.2) where the
paper gives them; a recipe's profile overrides them like any stage's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from herd.core.recipe import DataSource, LoraSpec, SFTStage, hash_neutral
from herd.core.registry import STAGE_CONFIGS


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
    # recompute each decoder layer's activations in the backward (transformers' per-layer checkpointing):
    # a micro-batch's activations drop from every layer's to one layer's (bench/pair_memory.py: 2.7x less
    # memory for 10-19 % more time per step)
    gradient_checkpointing: bool = False
    # a pair's chosen and rejected share their prompt: run it once per pair in training, both replies
    # reading its keys and values (the same loss and gradients, tested). Off by default: with
    # gradient_checkpointing a step took 1.07-1.18x less time but peaked 1.34x higher (bench/pair_memory.py)
    shared_prompt: bool = False
    # glibc's M_MMAP_THRESHOLD for the run, in MB (0: glibc's adaptive default; core/recipe.py TrainStage)
    heap_mmap_threshold_mb: int = Field(default=0, ge=0, le=32)
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
    fsdp: bool = False  # under torchrun: shard with FSDP2 instead of replicating with DDP

    @model_validator(mode="after")
    def _shared_prompt_unsharded(self):
        if self.shared_prompt and self.fsdp:  # FSDP2 frees the gathered weights between the two passes
            raise ValueError("shared_prompt does not support fsdp (the prompt's pass and the replies' would each "
                             "gather the sharded layers before one backward); use DDP or shared_prompt: false")
        return self


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
    data: list[DataSource] = Field(default_factory=list)  # preference files; may be empty with pairs_from
    # pairs from an earlier rejection_sampling stage of this derivation (its name), before any from `data`:
    # each of its training prompts' highest- and lowest-reward samples, as chosen and rejected (a cut one
    # rendered open, as that stage trains it). PPO, which DPO stands in for, learns from the reward
    # model's scores of the policy's own samples; human pairs of other models' replies carry no such
    # signal. Largest reward gap first (so max_train_pairs keeps the clearest); a prompt whose two
    # differ by less than min_reward_gap, or whose best sample is empty, gives none. The summary
    # then also scores the policy's greedy replies to that stage's held-out prompts (its dev: neither sampled
    # for training nor paired) with that stage's reward, beside the parent's: a learning rate is chosen there
    pairs_from: str | None = None
    min_reward_gap: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _some_pairs(self):
        if not self.data and not self.pairs_from:
            raise ValueError("a dpo stage needs pairs: data (preference files), pairs_from (an earlier "
                             "rejection_sampling stage's name), or both")
        return self

    def check_earlier(self, earlier: list) -> str | None:
        """Cross-stage check at recipe load: ``pairs_from`` names an EARLIER rejection_sampling stage."""
        if self.pairs_from and not any(s.name == self.pairs_from and s.kind == "rejection_sampling"
                                       for s in earlier):
            return (f"pairs_from: '{self.pairs_from}' is not an earlier rejection_sampling stage (earlier: "
                    f"{[s.name for s in earlier] or 'none'})")
        return None


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
    # the paper re-tunes the temperature per iteration by the best-of-K reward (§3.2.3, its Figure 21): with
    # candidates here, each draws K samples per held-out (dev) prompt, and the one whose mean best reward is
    # highest samples the training prompts (``temperature`` is then unused); empty: ``temperature``
    temperatures: list[float] = Field(default=[], json_schema_extra=hash_neutral([]))
    top_p: float = Field(default=1.0, gt=0, le=1)
    # 0: the whole vocabulary (the paper samples at a temperature). transformers' generate, which herd used
    # before its own engine, silently kept only the 50 most likely tokens
    top_k: int = Field(default=0, ge=0)
    max_new_tokens: int = Field(default=256, gt=0)
    # a sample cut at max_new_tokens is not a whole reply. drop: it is scored but never kept (a prompt whose
    # K samples were all cut yields no record); open: it may be kept, trained as the beginning of a reply
    # (its tokens, no end of turn); keep: trained as if it ended there (what herd did before; not advised)
    truncated: Literal["drop", "open", "keep"] = "drop"
    gen_batch: int = Field(default=8, gt=0)
    # the weights the K samples are drawn with: auto = bf16 where the hardware has it natively (1.4x the
    # fp32 tokens/s in bench/generation.py); held-out rewards are always measured in fp32
    sample_precision: Literal["auto", "fp32", "bf16"] = "auto"
    # the arithmetic the K samples are scored in, to choose the one kept: auto = bf16 autocast where native,
    # the arithmetic reward models trained under `precision: auto` learned in (2.2x fp32 on the llama2chat small
    # stage's samples, the same best reply for 60 of 62 prompts: bench/score_precision.py); held-out rewards fp32
    score_precision: Literal["auto", "fp32", "bf16"] = "auto"
    score_batch: int = Field(default=8, gt=0)
    seed: int = 0
    sft: SFTStage = SFTStage(name="sft", epochs=1.0)  # how the kept replies are trained

    @model_validator(mode="after")
    def _dev_temperatures(self) -> RejectionSamplingStage:
        if any(t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures: each must be > 0 (got {self.temperatures})")
        if self.temperatures and self.eval_size == 0:
            raise ValueError("temperatures are chosen on the held-out prompts: set eval_size > 0")
        return self


class PPOStage(_Strict):
    """Llama 2's PPO (§5.2 step 5): the parent is the policy, a frozen copy the reference, the reward
    ``whiten(logit(Rc)) − β·KL`` from the stage's reward model(s), a separate value model (a scalar head
    on a copy of the parent). Defaults: §5.2 step 5 (β 0.01 for 7B/13B, 0.005 for 34B/70B; batch 512
    prompts, mini-batch 64, one gradient step per mini-batch, clip 0.2; AdamW β 0.9/0.95, eps 1e-5,
    weight decay 0.1, grad clip 1.0, constant lr 1e-6; 200-400 iterations). GAE γ/λ, the value model's
    learning rate and clip, and the generation length are not given in the paper (γ 1, λ 0.95, TRL's)."""

    name: str = "ppo"
    kind: Literal["ppo"] = "ppo"
    data: list[DataSource] = Field(min_length=1)  # prompts: any preference/KTO file, or SFT formats
    eval_size: int = Field(default=20, ge=0)  # held-out prompts: greedy mean reward of parent vs result
    split_seed: int = 42
    max_prompts: int | None = Field(default=None, gt=0)
    max_prompt_len: int = Field(default=1024, ge=8)  # prompts longer (tokens) are dropped, counted
    # a reward-model artifact folder, or the name of an earlier stage of this derivation
    reward_model: str
    safety_reward_model: str | None = None  # with it, Rc = Rs if safety prompt or Rs < threshold else Rh
    safety_threshold: float = Field(default=0.15, gt=0, lt=1)
    beta: float = Field(default=0.01, ge=0)  # KL penalty coefficient
    iterations: int = Field(default=200, gt=0)  # the paper: 200-400, early-stopped on held-out prompts
    batch_size: int = Field(default=512, gt=0)  # prompts (one sample each) per PPO iteration
    mini_batch: int = Field(default=64, gt=0)  # samples per gradient step
    micro_batch: int = Field(default=8, gt=0)  # samples per forward/backward (memory only)
    ppo_epochs: int = Field(default=1, gt=0)  # passes over an iteration's samples (the paper: 1)
    clip: float = Field(default=0.2, gt=0)  # policy ratio clip ε
    value_clip: float = Field(default=0.2, gt=0)  # value prediction clip around the rollout's values
    gamma: float = Field(default=1.0, ge=0, le=1)
    lam: float = Field(default=0.95, ge=0, le=1)
    whiten_advantages: bool = True
    lr: float = Field(default=1e-6, gt=0)  # constant
    value_lr: float | None = Field(default=None, gt=0)  # None = lr (one optimiser, as TRL)
    weight_decay: float = Field(default=0.1, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = Field(default=1e-5, gt=0)
    grad_clip: float | None = 1.0  # per model (policy, value)
    temperature: float = Field(default=1.0, gt=0)  # sampling; log-probs are of logits / temperature
    top_p: float = Field(default=1.0, gt=0, le=1)
    # 0: the whole vocabulary (the paper samples at a temperature). transformers' generate, which herd used
    # before its own engine, silently kept only the 50 most likely tokens
    top_k: int = Field(default=0, ge=0)
    max_new_tokens: int = Field(default=256, gt=0)
    gen_batch: int = Field(default=16, gt=0)
    score_batch: int = Field(default=8, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_every: int = Field(default=0, ge=0)  # iterations; 0 = none
    # Llama 2 "use[s] evaluations on held-out prompts for early stopping": every eval_every iterations the
    # greedy mean reward on the held-out prompts is measured; the best iteration's policy is the result,
    # and training stops after `patience` evaluations without improvement (0 = never early)
    eval_every: int = Field(default=0, ge=0)
    patience: int = Field(default=0, ge=0)
    seed: int = 0


for _cfg in (RewardModelStage, DPOStage, RejectionSamplingStage, PPOStage):
    STAGE_CONFIGS.add(_cfg.model_fields["kind"].default, _cfg)
