"""The alignment objectives as pure tensor functions (no model, no data), so each is tested by hand.

- :func:`dpo_loss`: DPO's sigmoid loss from policy/reference sequence log-probs (Rafailov et al. 2023;
  TRL's ``loss_type="sigmoid"``);
- :func:`bradley_terry_loss`: Llama 2's reward-model loss ``−log σ(r_c − r_r − m(r))`` (dossier §5.2
  step 3), with :func:`rating_margins` mapping the four rating levels to Table 27's margins;
- :func:`combine_rewards`: Llama 2's piecewise choice between the safety and helpfulness rewards;
- :func:`ppo_sequence_reward` / :func:`ppo_token_rewards`: the PPO reward
  ``R = whiten(logit(Rc)) − β·KL(πθ‖π0)`` (dossier §5.2 step 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Table 27 (dossier §5.2 step 3): margin for significantly better / better / slightly better /
# negligibly better-unsure, in the order of herd.data.readers.preference.RATING_LEVELS.
MARGINS: dict[str, tuple[float, float, float, float]] = {
    "small": (1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0),
    "large": (3.0, 2.0, 1.0, 0.0),
}
SAFETY_THRESHOLD = 0.15  # §5.2 step 5: precision 0.89 / recall 0.55 on Meta Safety


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss ``−log σ(β[(π_c − ref_c) − (π_r − ref_r)])`` and the implicit rewards
    ``β(π − ref)`` of chosen and rejected (detached; their difference is the reward margin)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per-pair reward-model loss ``−log σ(r_c − r_r − m)``: with a margin the model must separate pairs
    the annotators rated as clearly different by more (Llama 2, Table 27-28)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - (margin if isinstance(margin, torch.Tensor) else torch.as_tensor(margin, dtype=diff.dtype,
                                                                                       device=diff.device))
    return -F.logsigmoid(diff)


def rating_margin(rating: str | None, scheme: str, explicit: float | None = None) -> float:
    """The margin of one pair: an explicit margin wins; an unrated pair (or scheme ``none``) gets 0."""
    from herd.data.readers.preference import RATING_LEVELS

    if explicit is not None:
        return float(explicit)
    if scheme == "none" or rating is None:
        return 0.0
    if scheme not in MARGINS:
        raise ValueError(f"unknown margin scheme '{scheme}' (known: none, {', '.join(MARGINS)})")
    return MARGINS[scheme][RATING_LEVELS.index(rating)]


def rating_margins(ratings: Sequence[str | None], scheme: str,
                   explicit: Sequence[float | None] | None = None) -> torch.Tensor:
    """Margins of a batch of pairs as a float tensor (see :func:`rating_margin`)."""
    explicit = explicit if explicit is not None else [None] * len(ratings)
    return torch.tensor([rating_margin(r, scheme, e) for r, e in zip(ratings, explicit)], dtype=torch.float32)


def combine_rewards(helpful: torch.Tensor, safety: torch.Tensor, is_safety: torch.Tensor | bool,
                    threshold: float = SAFETY_THRESHOLD) -> torch.Tensor:
    """Llama 2's ``Rc = Rs if is_safety(p) or Rs < threshold else Rh``: the safety reward decides on
    adversarial prompts and whenever it flags a reply as likely unsafe; helpfulness decides otherwise.
    Scores are probabilities in (0, 1) (σ of the raw reward-model outputs), as the threshold implies."""
    flag = torch.as_tensor(is_safety, dtype=torch.bool, device=safety.device)
    return torch.where(flag | (safety < threshold), safety, helpful)


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``log(p / (1 − p))``, clamped away from 0 and 1 so a saturated reward stays finite. Llama 2
    applies it to undo the sigmoid and so restore the reward's signal at the extremes."""
    p = p.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def whiten(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x − mean) / sqrt(var + eps)`` over the batch, with the Bessel-corrected variance (TRL's
    ``masked_whiten`` convention), so reward scales stay comparable across PPO batches."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) * torch.rsqrt(x.var(unbiased=True) + eps)


def ppo_sequence_reward(combined: torch.Tensor, policy_logps: torch.Tensor, ref_logps: torch.Tensor,
                        beta: float) -> torch.Tensor:
    """``R = whiten(logit(Rc)) − β·KL`` per sampled reply, with the KL estimated on the sample as
    ``log πθ(g|p) − log π0(g|p)`` (sequence log-probs). β: 0.01 (7B, 13B), 0.005 (34B, 70B)."""
    return whiten(logit(combined)) - beta * (policy_logps - ref_logps)


def ppo_token_rewards(combined: torch.Tensor, policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor,
                      mask: torch.Tensor, beta: float) -> torch.Tensor:
    """The same reward spread over tokens, as PPO implementations consume it: ``−β·(log πθ − log π0)`` at
    every generated token and ``whiten(logit(Rc))`` added at each reply's last token. Summed over a row it
    equals :func:`ppo_sequence_reward`. ``mask`` is 1 on generated tokens (rows must have at least one)."""
    mask = mask.to(policy_token_logps.dtype)
    rewards = -beta * (policy_token_logps - ref_token_logps) * mask
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)
    final = whiten(logit(combined)).to(rewards.dtype)
    return rewards.index_put((torch.arange(mask.shape[0], device=mask.device), last), final, accumulate=True)
