"""What rejection sampling and PPO share: their prompts (read and split), reward scoring with one or two
reward models (Llama 2's helpfulness/safety combination), greedy replies and reward summaries; and the
dev a later DPO stage is scored on, read from a finished rejection stage (``rejection_dev``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from herd.artifacts import is_artifact
from herd.core.errors import ConfigError, DataError, HerdError
from herd.data.readers.preference import (
    LABELED_FORMATS,
    PAIR_FORMATS,
    READER_OPTIONS,
    read_labeled,
    read_pairs,
    split_by_prompt,
)
from herd.data.report import DataReport
from herd.engine.distributed import map_chunks
from herd.engine.losses import combine_rewards
from herd.engine.reward_model import RewardModel
from herd.stages.pairs import recipe_dir
from herd.templates import Template


def distribution(x: torch.Tensor) -> dict:
    """Summary statistics of a reward sample, for the stage summary."""
    x = x.flatten().double()
    if x.numel() == 0:
        return {"n": 0}
    q = torch.quantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"n": int(x.numel()), "mean": round(float(x.mean()), 5),
            "std": round(float(x.std()), 5) if x.numel() > 1 else 0.0, "min": round(float(x.min()), 5),
            "p10": round(q[0], 5), "median": round(q[1], 5), "p90": round(q[2], 5), "max": round(float(x.max()), 5)}


def _prompt_of(messages: list[dict]) -> list[dict] | None:
    """The conversation up to (and including) its last user turn: what the policy answers."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    return None if last_user is None else [dict(m) for m in messages[: last_user + 1]]


def load_prompts(sources: list, *, relative_to: Path | None = None, report: DataReport | None = None
                 ) -> tuple[list[dict], list[dict]]:
    """Unique prompts (``{"messages", "safety", "source", "index"}``) from preference/KTO files or any
    herd SFT format (their final replies are dropped); ``options: {safety: true}`` marks a file's prompts
    as safety prompts. Returns (prompts, per-file lineage records)."""
    from herd.core.hashing import sha256_file
    from herd.core.paths import resolve_data_path
    from herd.data import load_examples

    report = report if report is not None else DataReport()
    seen: set[str] = set()
    prompts: list[dict] = []
    records: list[dict] = []
    for src in sources:
        path = resolve_data_path(src.path, relative_to)
        if not path.exists():
            raise DataError(str(path), f"data '{src.name}': file not found")
        opts = dict(src.options)
        safety = bool(opts.pop("safety", False))
        if src.format in PAIR_FORMATS + LABELED_FORMATS and set(opts) - READER_OPTIONS:
            raise DataError(str(path), f"data '{src.name}': unknown option(s) "
                            f"{', '.join(sorted(set(opts) - READER_OPTIONS))} (known: {', '.join(sorted(READER_OPTIONS))})")
        if src.columns:
            opts["columns"] = src.columns
        if src.format in PAIR_FORMATS:
            found = [(p.prompt, p.source, p.index) for p in read_pairs(path, src.format, report=report, **opts)]
        elif src.format in LABELED_FORMATS:
            found = [(x.prompt, x.source, x.index) for x in read_labeled(path, src.format, report=report, **opts)]
        else:
            found = [(_prompt_of(e.messages), e.source, e.index) for e in load_examples(path, src.format, **opts)]
        if src.max_records:
            found = found[: src.max_records]
        n = 0
        for msgs, source, index in found:
            if msgs is None:
                continue
            key = json.dumps(msgs, sort_keys=True, ensure_ascii=False)
            if key in seen:
                continue
            seen.add(key)
            prompts.append({"messages": msgs, "safety": safety, "source": source, "index": index})
            n += 1
        records.append({"name": src.name, "path": str(path), "sha256": sha256_file(path), "records": n})
    return prompts, records


def stage_folder(workspace: Path | None, name: str) -> Path | None:
    """The finished folder of stage ``name`` in a derive workspace (``NN-<name>-<hash>``; the newest wins)."""
    if workspace is None or not Path(workspace).is_dir():
        return None
    found = [p for p in Path(workspace).glob(f"[0-9][0-9]-{name}-*") if p.is_dir() and is_artifact(p)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_reward_model(spec: str, workspace: Path | None, recipe: dict | None) -> Path:
    """A reward-model folder: a path (absolute, or relative to the recipe) or the name of an earlier
    stage of this derivation (its folder ``NN-<name>-<hash>`` in the workspace; the newest wins)."""
    for cand in (Path(spec).expanduser(), (recipe_dir(recipe) or Path.cwd()) / spec):
        if (cand / "config.json").is_file():
            return cand
    if (found := stage_folder(workspace, spec)) is not None:
        return found
    raise ConfigError(f"reward model '{spec}' not found: give a reward-model folder or the name of an earlier "
                      f"reward_model stage (searched {workspace or 'no workspace'})")


class Scorer:
    """One reward (the helpfulness RM alone), or Llama 2's ``Rc`` from a helpfulness and a safety RM,
    both as σ(raw score) in (0, 1), as the 0.15 threshold and PPO's logit(Rc) imply."""

    def __init__(self, helpful: RewardModel, safety: RewardModel | None = None, threshold: float = 0.15,
                 batch_size: int = 8):
        self.helpful, self.safety, self.threshold, self.batch_size = helpful, safety, threshold, batch_size

    def __call__(self, prompts: list[list[dict]], replies: list[str], is_safety: list[bool],
                 desc: str | None = None) -> torch.Tensor:
        """``desc``: report progress under ``<desc> (helpfulness)`` and ``<desc> (safety)``."""
        h = self.helpful.score(prompts, replies, self.batch_size, desc and f"{desc} (helpfulness)")
        if self.safety is None:
            return h
        s = self.safety.score(prompts, replies, self.batch_size, desc and f"{desc} (safety)")
        return combine_rewards(torch.sigmoid(h), torch.sigmoid(s), torch.tensor(is_safety), self.threshold)


# -- sampling -------------------------------------------------------------------------------------

def greedy_replies(model, tokenizer, template: Template, prompts: list[dict], max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """Greedy replies to ``prompts`` in batches of ``batch_size`` (shared by the ranks under torchrun)."""
    from herd.engine.generation import generate

    stops = template.stop_strings(tokenizer)
    return map_chunks(lambda part, _c: generate(model, tokenizer, [template.prompt(p["messages"], tokenizer)
                                                                   for p in part],
                                                max_new_tokens=max_new_tokens, temperature=0.0, stop=stops,
                                                batch_size=len(part)), prompts, batch_size)


def split_prompts(prompts: list[dict], cfg) -> tuple[list[dict], list[dict]]:
    """(training, held-out) prompts: split by prompt with the stage's seed, training capped at
    ``max_prompts``; shared by rejection sampling and PPO."""
    train_p, held_p = split_by_prompt([_P(p) for p in prompts], cfg.eval_size, cfg.split_seed)
    train_p, held_p = [x.d for x in train_p], [x.d for x in held_p]
    if cfg.max_prompts:
        train_p = train_p[: cfg.max_prompts]
    if not train_p:
        raise HerdError(f"stage {cfg.name}: no training prompts")
    return train_p, held_p


class _P:
    """A prompt record with the ``prompt`` attribute that :func:`split_by_prompt` keys on."""

    def __init__(self, d: dict):
        self.d, self.prompt = d, d["messages"]


def heldout_greedy_reward(model, tokenizer, template: Template, prompts: list[dict], scorer: Scorer, cfg) -> dict:
    """The reward distribution of ``model``'s greedy replies to ``prompts`` (``cfg``: a rejection-sampling
    stage's ``max_new_tokens`` and ``gen_batch``)."""
    if not prompts:
        return {"n": 0}
    replies = greedy_replies(model, tokenizer, template, prompts, cfg.max_new_tokens, cfg.gen_batch)
    return distribution(scorer([p["messages"] for p in prompts], replies, [p["safety"] for p in prompts]))


class RejectionDev(NamedTuple):
    """A finished rejection stage's dev: its held-out prompts, its scorer and its settings."""

    prompts: list[dict]
    scorer: Scorer
    cfg: object  # the stage's RejectionSamplingStage (max_new_tokens, gen_batch)


def rejection_dev(rejection_dir: Path, template: Template, *, recipe: dict | None, workspace: Path | None,
                  earlier: dict[str, Path] | None = None) -> RejectionDev | None:
    """A finished rejection stage's held-out prompts, scored as that stage scored its own policy (its
    reward models, its combined reward, its token cap): the dev a later policy trained on its samples
    (DPO's ``pairs_from``) is compared on with :func:`heldout_greedy_reward`. Those prompts are neither
    sampled for training nor paired. None when the folder's lineage does not carry the stage's settings."""
    from herd.artifacts import read_lineage
    from herd.engine.reward_model import load_reward_model
    from herd.stages.configs import RejectionSamplingStage

    try:
        cfg = RejectionSamplingStage.model_validate(read_lineage(rejection_dir)["stage"]["config"])
    except (HerdError, KeyError, TypeError, ValueError):
        return None
    prompts, _ = load_prompts(cfg.data, relative_to=recipe_dir(recipe))
    _, held = split_prompts(prompts, cfg)
    earlier = earlier or {}
    rms = [load_reward_model(earlier.get(n) or resolve_reward_model(n, workspace, recipe), template)
           for n in (cfg.reward_model, cfg.safety_reward_model) if n]
    return RejectionDev(held, Scorer(rms[0], rms[1] if len(rms) > 1 else None, cfg.safety_threshold,
                                     cfg.score_batch), cfg)
