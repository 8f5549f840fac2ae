"""The ``rejection_sampling`` stage: Llama 2's rejection-sampling fine-tuning (dossier §5.2 step 4).

For every training prompt, K replies are sampled from the parent, scored by the reward model (or by the
piecewise combination of a helpfulness and a safety reward model, §5.2 step 5), and the best reply is
kept; the kept (prompt, reply) records are then trained with herd's SFT engine
(:func:`herd.stages.sft.run_sft`). The summary reports the reward distribution of all samples against
the kept ones and the max-of-K curve (mean best reward as a function of K: what more samples per
prompt buy), plus the held-out prompts' mean reward of the parent's and the new
model's greedy replies.

Resumable: samples are appended per chunk of prompts to ``<out>.rs-work/samples.jsonl`` (a resumed run
skips finished chunks; generation is seeded per chunk, so the samples are the same either way) and the
SFT run keeps its own atomic checkpoints.

Under torchrun the ranks share sampling, scoring and the greedy evaluations chunk by chunk
(:mod:`herd.engine.distributed`: the same chunks and seeds as one process, so the same samples), each rank
appending to its own cache file; the SFT run is herd's distributed SFT; rank 0 publishes.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from herd.align.common import recipe_dir
from herd.align.config import RejectionSamplingStage
from herd.align.preference import (
    LABELED_FORMATS,
    PAIR_FORMATS,
    READER_OPTIONS,
    read_labeled,
    read_pairs,
    split_by_prompt,
)
from herd.align.reward import RewardModel, load_reward_model
from herd.artifacts import (
    atomic_write_text,
    is_artifact,
    model_card,
    publish,
    read_lineage,
    staging_dir,
    write_lineage,
)
from herd.base import BaseRef, load_model, load_tokenizer
from herd.core.errors import ConfigError, DataError, HerdError
from herd.core.progress import Progress
from herd.core.registry import STAGES
from herd.data.records import Example
from herd.data.report import DataReport
from herd.engine.distributed import barrier, map_chunks
from herd.engine.losses import combine_rewards
from herd.engine.training import device, dist_env
from herd.stages import StageContext
from herd.templates import Template

# -- pure pieces ------------------------------------------------------------------------------------

def select_best(rewards: torch.Tensor) -> torch.Tensor:
    """Index of the highest-reward sample of each prompt (``rewards``: [prompts, K]; ties: the first)."""
    return rewards.argmax(dim=1)


def expected_max_of_k(rewards: torch.Tensor) -> list[float]:
    """Mean over prompts of E[max reward of k samples], k = 1..K, estimated without bias from the K
    samples drawn (each k-subset equally likely): ``Σ_i r_(i)·C(i−1, k−1)/C(K, k)`` over ascending
    order statistics r_(i). k = 1 is the mean sample reward, k = K the mean kept reward."""
    n, K = rewards.shape
    srt = rewards.double().sort(dim=1).values
    out = []
    for k in range(1, K + 1):
        w = torch.tensor([math.comb(i - 1, k - 1) for i in range(1, K + 1)], dtype=torch.float64) / math.comb(K, k)
        out.append(round(float((srt * w).sum(dim=1).mean()), 5))
    return out


def distribution(x: torch.Tensor) -> dict:
    """Summary statistics of a reward sample, for the stage summary."""
    x = x.flatten().double()
    if x.numel() == 0:
        return {"n": 0}
    q = torch.quantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"n": int(x.numel()), "mean": round(float(x.mean()), 5),
            "std": round(float(x.std()), 5) if x.numel() > 1 else 0.0, "min": round(float(x.min()), 5),
            "p10": round(q[0], 5), "median": round(q[1], 5), "p90": round(q[2], 5), "max": round(float(x.max()), 5)}


# -- prompts --------------------------------------------------------------------------------------

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


def resolve_reward_model(spec: str, workspace: Path | None, recipe: dict | None) -> Path:
    """A reward-model folder: a path (absolute, or relative to the recipe) or the name of an earlier
    stage of this derivation (its folder ``NN-<name>-<hash>`` in the workspace; the newest wins)."""
    for cand in (Path(spec).expanduser(), (recipe_dir(recipe) or Path.cwd()) / spec):
        if (cand / "config.json").is_file():
            return cand
    if workspace is not None and Path(workspace).is_dir():
        found = [p for p in Path(workspace).glob(f"[0-9][0-9]-{spec}-*") if p.is_dir() and is_artifact(p)]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    raise ConfigError(f"reward model '{spec}' not found: give a reward-model folder or the name of an earlier "
                      f"reward_model stage (searched {workspace or 'no workspace'})")


class Scorer:
    """One reward (the helpfulness RM alone), or Llama 2's ``Rc`` from a helpfulness and a safety RM,
    both as σ(raw score) in (0, 1), as the 0.15 threshold and PPO's logit(Rc) imply."""

    def __init__(self, helpful: RewardModel, safety: RewardModel | None = None, threshold: float = 0.15,
                 batch_size: int = 8):
        self.helpful, self.safety, self.threshold, self.batch_size = helpful, safety, threshold, batch_size

    def __call__(self, prompts: list[list[dict]], replies: list[str], is_safety: list[bool]) -> torch.Tensor:
        h = self.helpful.score(prompts, replies, self.batch_size)
        if self.safety is None:
            return h
        s = self.safety.score(prompts, replies, self.batch_size)
        return combine_rewards(torch.sigmoid(h), torch.sigmoid(s), torch.tensor(is_safety), self.threshold)


# -- sampling -------------------------------------------------------------------------------------

def _read_cache(path: Path) -> dict[int, list[list[str]]]:
    done: dict[int, list[list[str]]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by a kill: that chunk is sampled again
            continue
        done[rec["chunk"]] = rec["replies"]
    return done


def sample_replies(model, tokenizer, template: Template, prompts: list[dict], cfg: RejectionSamplingStage,
                   cache: Path, progress: bool = True) -> list[list[str]]:
    """K samples per prompt, appended per chunk of ``gen_batch`` prompts to ``cache`` (JSON Lines; rank r
    of a torchrun appends to ``<cache stem>.rank<r>.jsonl``, and every cache file is read on resume)."""
    from herd.engine.generation import generate

    rank, world = dist_env()
    own = cache if rank == 0 else cache.with_name(f"{cache.stem}.rank{rank}{cache.suffix}")
    done: dict[int, list[list[str]]] = {}
    for path in sorted(cache.parent.glob(f"{cache.stem}*{cache.suffix}")):
        done.update(_read_cache(path))
    if own.is_file():  # rewrite without a cut line, so appended chunks start on a line of their own
        atomic_write_text(own, "".join(json.dumps({"chunk": c, "replies": r}) + "\n"
                                       for c, r in _read_cache(own).items()))
    stops = template.stop_strings(tokenizer)
    n_chunks = math.ceil(len(prompts) / cfg.gen_batch)
    mine = range(rank, n_chunks, world)
    bar = Progress(total=len(mine), initial=sum(1 for c in mine if c in done), desc=f"{cfg.name} sample",
                   unit="chunk", enabled=progress and rank == 0)

    def one(part: list[dict], c: int) -> list[list[str]]:
        if c in done and len(done[c]) == len(part):
            return done[c]
        texts = [template.prompt(p["messages"], tokenizer) for p in part for _ in range(cfg.k)]
        flat = generate(model, tokenizer, texts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, stop=stops, batch_size=cfg.gen_batch * cfg.k, seed=cfg.seed + 7919 * c)
        replies = [flat[i * cfg.k:(i + 1) * cfg.k] for i in range(len(part))]
        with open(own, "a") as f:
            f.write(json.dumps({"chunk": c, "replies": replies}) + "\n")
        bar.update(1)
        return replies

    with bar:
        return map_chunks(one, prompts, cfg.gen_batch)


def greedy_replies(model, tokenizer, template: Template, prompts: list[dict], max_new_tokens: int,
                   batch_size: int) -> list[str]:
    """Greedy replies to ``prompts`` in batches of ``batch_size`` (shared by the ranks under torchrun)."""
    from herd.engine.generation import generate

    stops = template.stop_strings(tokenizer)
    return map_chunks(lambda part, _c: generate(model, tokenizer, [template.prompt(p["messages"], tokenizer)
                                                                   for p in part],
                                                max_new_tokens=max_new_tokens, temperature=0.0, stop=stops,
                                                batch_size=len(part)), prompts, batch_size)


def _greedy_reward(model, tokenizer, template: Template, prompts: list[dict], scorer: Scorer,
                   cfg: RejectionSamplingStage) -> dict:
    if not prompts:
        return {"n": 0}
    replies = greedy_replies(model, tokenizer, template, prompts, cfg.max_new_tokens, cfg.gen_batch)
    return distribution(scorer([p["messages"] for p in prompts], replies, [p["safety"] for p in prompts]))


# -- the stage ------------------------------------------------------------------------------------

def run_rejection_sampling(cfg: RejectionSamplingStage, parent: BaseRef, template: Template, out: Path, *,
                           name: str, resume: bool = False, recipe: dict | None = None, progress: bool = True,
                           workspace: Path | None = None) -> tuple[Path, dict]:
    """Sample, score, keep the best, fine-tune; writes the artifact at ``out``; returns (path, summary)."""
    from herd.stages.sft import run_sft

    rank, world = dist_env()
    report = DataReport()
    prompts, data_records = load_prompts(cfg.data, relative_to=recipe_dir(recipe), report=report)
    train_p, held_p = split_prompts(prompts, cfg)
    work = out.with_name(out.name + ".rs-work")
    sft_out = out.with_name(out.name + ".rs-sft")
    if not resume and rank == 0:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sft_out, ignore_errors=True)
    barrier()
    work.mkdir(parents=True, exist_ok=True)
    helpful = load_reward_model(resolve_reward_model(cfg.reward_model, workspace, recipe), template)
    safety = (load_reward_model(resolve_reward_model(cfg.safety_reward_model, workspace, recipe), template)
              if cfg.safety_reward_model else None)
    scorer = Scorer(helpful, safety, cfg.safety_threshold, cfg.score_batch)
    tok = load_tokenizer(parent)
    model = load_model(parent).to(device())
    if progress and rank == 0:
        print(f"[{cfg.name}] {len(train_p)} prompts x {cfg.k} samples; {len(held_p)} held-out prompts")
    samples = sample_replies(model, tok, template, train_p, cfg, work / "samples.jsonl", progress)
    flat_prompts = [p["messages"] for p in train_p for _ in range(cfg.k)]
    flat_safety = [p["safety"] for p in train_p for _ in range(cfg.k)]
    rewards = scorer(flat_prompts, [r for rs in samples for r in rs], flat_safety).view(len(train_p), cfg.k)
    best = select_best(rewards)
    kept = rewards.gather(1, best.unsqueeze(1)).squeeze(1)
    held_before = _greedy_reward(model, tok, template, held_p, scorer, cfg)
    del model
    examples = [Example(messages=[*p["messages"], {"role": "assistant", "content": samples[i][int(best[i])]}],
                        source=p["source"], index=p["index"], meta={"reward": float(kept[i])})
                for i, p in enumerate(train_p)]
    empty = sum(1 for e in examples if not e.messages[-1]["content"].strip())
    examples = [e for e in examples if e.messages[-1]["content"].strip()]
    if not examples:
        raise HerdError(f"stage {cfg.name}: every kept sample is empty")
    barrier()  # every rank decides alike whether the SFT run is finished already
    if is_artifact(sft_out):
        sft_summary = read_lineage(sft_out).get("metrics") or {}
    else:
        _, sft_summary = run_sft(cfg.sft, parent, template, examples, sft_out, name=name, resume=resume,
                                 recipe=recipe, data=data_records, progress=progress)
    barrier()  # rank 0 published the SFT model
    new_model = load_model(sft_out).to(device())
    held_after = _greedy_reward(new_model, tok, template, held_p, scorer, cfg)
    del new_model
    summary = {"prompts": len(train_p), "k": cfg.k, "temperature": cfg.temperature,
               "reward_sampled": distribution(rewards), "reward_kept": distribution(kept),
               "max_of_k": expected_max_of_k(rewards), "empty_kept_dropped": empty,
               "heldout_greedy_reward_parent": held_before, "heldout_greedy_reward": held_after,
               "reward_models": [str(helpful.path)] + ([str(safety.path)] if safety else []),
               "sft": {k: v for k, v in sft_summary.items() if k not in ("data", "data_report")},
               "data": report.as_dict(), "world_size": world}
    if rank != 0:
        return out, summary
    tmp = staging_dir(out)
    tmp.rmdir()
    shutil.copytree(sft_out, tmp)  # copy, not move: a kill here leaves the finished SFT run for a resume
    with open(tmp / "rejection_samples.jsonl", "w") as f:
        for i, p in enumerate(train_p):
            f.write(json.dumps({"prompt": p["messages"], "replies": samples[i],
                                "rewards": [round(x, 5) for x in rewards[i].tolist()], "kept": int(best[i])},
                               ensure_ascii=False) + "\n")
    lineage = read_lineage(tmp)
    lineage["stage"] = {"name": cfg.name, "kind": cfg.kind, "config": cfg.model_dump(mode="json")}
    lineage["metrics"] = summary
    lineage = write_lineage(tmp, lineage)
    md = (f"Rejection sampling: {len(train_p)} prompts x {cfg.k} samples; mean reward sampled "
          f"{summary['reward_sampled'].get('mean')}, kept {summary['reward_kept'].get('mean')}.")
    (tmp / "README.md").write_text(model_card(lineage, extra_md=md))
    publish(tmp, out)
    shutil.rmtree(sft_out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return out, summary


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


@STAGES.register("rejection_sampling")
def run(cfg: RejectionSamplingStage, ctx: StageContext) -> tuple[Path, dict]:
    """The registered entry point: ``herd derive`` calls every stage kind this way."""
    return run_rejection_sampling(cfg, ctx.parent, ctx.template, ctx.out, name=ctx.name, resume=ctx.resume, recipe=ctx.recipe,
                                  progress=ctx.progress, workspace=ctx.workspace)
