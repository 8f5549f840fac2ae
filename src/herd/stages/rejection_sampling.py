"""The ``rejection_sampling`` stage: Llama 2's rejection-sampling fine-tuning (dossier §5.2 step 4).

For every training prompt, K replies are sampled from the parent, scored by the reward model (or by the
piecewise combination of a helpfulness and a safety reward model, §5.2 step 5), and the best reply is
kept; the kept (prompt, reply) records are then trained with herd's SFT engine
(the ``sft`` stage kind, called through the stage registry). The summary reports the reward distribution of all samples against
the kept ones and the max-of-K curve (mean best reward as a function of K: what more samples per
prompt buy), plus the held-out prompts' mean reward of the parent's and the new
model's greedy replies.

A sample cut at ``max_new_tokens`` is never trained as if it ended there (an end of turn after it
teaches the policy to stop mid-sentence). ``truncated: drop`` (the default, the paper's whole replies):
it is scored (it counts in the reward distribution and the max-of-K curve) but not eligible, and a
prompt whose K samples were all cut gives no record. ``truncated: open``: it is eligible, and if kept
it is trained as the beginning of a reply (its tokens, no end of turn; a message marked ``open``),
for models whose replies run past any affordable cap, where keeping only whole ones would select for
short replies. ``keep``: the old rule, kept for comparison.

Resumable: samples are appended per batch of prompts to ``<out>.rs-work/samples.jsonl`` (a resumed run
skips finished prompts; each prompt's samples draw from their own seeded streams, so they are the same
either way) and the SFT run keeps its own atomic checkpoints.

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
from herd.core.errors import HerdError
from herd.core.jsonlines import json_lines
from herd.core.phases import record, release_memory
from herd.core.progress import Progress
from herd.core.registry import STAGES
from herd.data.records import Example
from herd.data.report import DataReport
from herd.engine.distributed import barrier, map_chunks
from herd.engine.generation import sampling_model
from herd.engine.reward_model import check_reward_model, load_reward_model
from herd.engine.training import arithmetic, arithmetic_record, autocast, device, dist_env
from herd.stages import StageContext
from herd.stages.configs import RejectionSamplingStage
from herd.stages.pairs import SAMPLES_FILE, recipe_dir
from herd.stages.sampling import (  # noqa: F401  (re-exported for callers of this module)
    Scorer,
    distribution,
    greedy_replies,
    heldout_greedy_reward,
    load_prompts,
    resolve_reward_model,
    split_prompts,
)
from herd.templates import Template

# -- pure pieces ------------------------------------------------------------------------------------

def select_best(rewards: torch.Tensor, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the highest-reward sample of each prompt (``rewards``: [prompts, K]; ties: the first),
    among the ``eligible`` ones (bool, same shape) when given; a prompt with none eligible gets -1."""
    if eligible is None:
        return rewards.argmax(dim=1)
    best = rewards.masked_fill(~eligible, float("-inf")).argmax(dim=1)
    return torch.where(eligible.any(dim=1), best, torch.full_like(best, -1))


def expected_max_of_k(rewards: torch.Tensor) -> list[float]:
    """Mean over prompts of E[max reward of k samples], k = 1..K, estimated without bias from the K
    samples drawn (each k-subset equally likely): ``Σ_i r_(i)·C(i−1, k−1)/C(K, k)`` over ascending
    order statistics r_(i). k = 1 is the mean sample reward, k = K the mean best reward (the mean kept
    reward when every sample is eligible)."""
    n, K = rewards.shape
    srt = rewards.double().sort(dim=1).values
    out = []
    for k in range(1, K + 1):
        w = torch.tensor([math.comb(i - 1, k - 1) for i in range(1, K + 1)], dtype=torch.float64) / math.comb(K, k)
        out.append(round(float((srt * w).sum(dim=1).mean()), 5))
    return out


Replies = tuple[list[str], list[bool]]  # one prompt's K replies, and which of them finished


def _read_cache(path: Path, gen_batch: int) -> dict[int, Replies]:
    """Prompt index -> its replies. A line names its prompts (``"prompts"``); a line of the earlier
    format names a chunk of ``gen_batch`` prompts in input order (``"chunk"``), and is read so."""
    done: dict[int, Replies] = {}
    for line in json_lines(path.read_text(encoding="utf-8")) if path.is_file() else []:
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by a kill: its prompts are sampled again
            continue
        # caches written before finish reasons were kept: every reply counts as finished, as it did then
        finished = rec.get("finished") or [[True] * len(r) for r in rec["replies"]]
        which = rec.get("prompts") or range(rec["chunk"] * gen_batch, rec["chunk"] * gen_batch + len(rec["replies"]))
        done.update({i: (r, f) for i, r, f in zip(which, rec["replies"], finished)})
    return done


def _line(which: list[int], got: list[Replies]) -> str:
    return json.dumps({"prompts": which, "replies": [r for r, _ in got], "finished": [f for _, f in got]}) + "\n"


def sample_replies(model, tokenizer, template: Template, prompts: list[dict], cfg: RejectionSamplingStage,
                   cache: Path, progress: bool = True) -> tuple[list[list[str]], list[list[bool]]]:
    """K samples per prompt and whether each finished (a stop, not the token cap).

    Prompts decode in batches of ``gen_batch`` of similar length (longest first): a batch pads its
    prompts to its longest and every sequence attends over that width, so batching in input order
    (prompts of a dozen to 4,074 tokens side by side) computed three times the prompt tokens. Prompt ``i``'s
    sample ``j`` draws from its own random stream (``seed``, ``i * K + j``), so the samples do not depend
    on the batches (up to float rounding), on a resume, or on the ranks of a torchrun. Finished prompts
    are appended per batch to ``cache`` (JSON Lines; rank r appends to ``<cache stem>.rank<r>.jsonl``, and
    every cache file is read on resume)."""
    from herd.engine.generation import completions

    rank, world = dist_env()
    own = cache if rank == 0 else cache.with_name(f"{cache.stem}.rank{rank}{cache.suffix}")
    done: dict[int, Replies] = {}
    for path in sorted(cache.parent.glob(f"{cache.stem}*{cache.suffix}")):
        read = _read_cache(path, cfg.gen_batch)
        done.update(read)
        if path == own:  # rewrite without a cut line, so appended batches start on a line of their own
            atomic_write_text(own, "".join(_line([i], [v]) for i, v in read.items()))
    done = {i: v for i, v in done.items() if i < len(prompts) and len(v[0]) == cfg.k}
    stops = template.stop_strings(tokenizer)
    texts = [template.prompt(p["messages"], tokenizer) for p in prompts]
    lengths = [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    n_chunks = math.ceil(len(prompts) / cfg.gen_batch)
    mine = range(rank, n_chunks, world)
    finished_chunks = sum(1 for c in mine if all(i in done for i in order[c * cfg.gen_batch:(c + 1) * cfg.gen_batch]))
    bar = Progress(total=len(mine), initial=finished_chunks, desc=f"{cfg.name} sample", unit="batch",
                   enabled=progress and rank == 0)

    def one(part: list[int], _c: int) -> list[Replies]:
        need = [i for i in part if i not in done]
        if need:
            flat = completions(model, tokenizer, [texts[i] for i in need for _ in range(cfg.k)],
                               max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                               top_k=cfg.top_k, stop=stops, batch_size=len(need) * cfg.k, seed=cfg.seed,
                               stream_ids=[i * cfg.k + j for i in need for j in range(cfg.k)])
            rows = [flat[m * cfg.k:(m + 1) * cfg.k] for m in range(len(need))]
            got = [([x.text for x in r], [x.finish == "stop" for x in r]) for r in rows]
            with open(own, "a") as f:
                f.write(_line(need, got))
            done.update(zip(need, got))
            bar.update(1)
        return [done[i] for i in part]

    with bar:
        by_order = map_chunks(one, order, cfg.gen_batch)
    out: list[Replies] = [([], [])] * len(prompts)
    for i, v in zip(order, by_order):
        out[i] = v
    return [list(r) for r, _ in out], [list(f) for _, f in out]


def score_samples(scorer: Scorer, prompts: list[dict], samples: list[list[str]], desc: str | None = None
                  ) -> torch.Tensor:
    """The reward of every sample, [prompts, K]: ``samples[i]`` are prompt ``i``'s K replies."""
    k = len(samples[0]) if samples else 0
    return scorer([p["messages"] for p in prompts for _ in range(k)], [r for rs in samples for r in rs],
                  [p["safety"] for p in prompts for _ in range(k)], desc).view(len(prompts), k)


def choose_temperature(model, tokenizer, template: Template, prompts: list[dict], cfg: RejectionSamplingStage,
                       work: Path, load_scorer, progress: bool = True) -> tuple[float, dict]:
    """The sampling temperature, chosen on the held-out (dev) prompts as Llama 2 re-tuned it per iteration
    (§3.2.3, its Figure 21: the maximum reward among N samples, by temperature): each of ``cfg.temperatures``
    draws K samples per prompt, and the one with the highest mean best-of-K reward wins (ties: the first
    listed). Samples are cached per temperature in ``work`` (a resume reuses them). Returns (chosen,
    {temperature: its max-of-k curve, mean sample reward and mean best reward}); the sampling copy of
    ``model`` is freed before the reward models load."""
    sampler = sampling_model(model, cfg.sample_precision)
    drawn = {}
    for t in cfg.temperatures:
        at = cfg.model_copy(update={"temperature": t, "name": f"{cfg.name} dev T={t:g}"})
        drawn[t] = sample_replies(sampler, tokenizer, template, prompts, at, work / f"dev-T{t:g}.jsonl", progress)
    del sampler
    release_memory()
    curves = {}
    with autocast(cfg.score_precision):
        scorer = load_scorer()
        for t, (replies, _) in drawn.items():
            rewards = score_samples(scorer, prompts, replies)
            curve = expected_max_of_k(rewards)
            curves[t] = {"max_of_k": curve, "mean": curve[0], "best": curve[-1]}
        del scorer
    release_memory()
    chosen = max(cfg.temperatures, key=lambda t: curves[t]["best"])  # max() keeps the first of equals
    if progress and dist_env()[0] == 0:
        print(f"[{cfg.name}] temperature on {len(prompts)} held-out prompts, mean best of {cfg.k}: "
              + ", ".join(f"T={t:g} {c['best']:.4f}" for t, c in curves.items()) + f"; chosen T={chosen:g}")
    return chosen, {"prompts": len(prompts), "k": cfg.k, "chosen": chosen,
                    "by_temperature": {f"{t:g}": c for t, c in curves.items()}}


# -- the stage ------------------------------------------------------------------------------------

def run_rejection_sampling(cfg: RejectionSamplingStage, parent: BaseRef, template: Template, out: Path, *,
                           name: str, resume: bool = False, recipe: dict | None = None, progress: bool = True,
                           workspace: Path | None = None) -> tuple[Path, dict]:
    """Sample, score, keep the best, fine-tune; writes the artifact at ``out``; returns (path, summary)."""
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
    rm_paths = [check_reward_model(resolve_reward_model(n, workspace, recipe))
                for n in (cfg.reward_model, cfg.safety_reward_model) if n]

    def load_scorer() -> Scorer:
        """The reward models, loaded only while they score: the SFT in between does not carry them."""
        rms = [load_reward_model(p, template) for p in rm_paths]
        return Scorer(rms[0], rms[1] if len(rms) > 1 else None, cfg.safety_threshold, cfg.score_batch)

    tok = load_tokenizer(parent)
    model = load_model(parent).to(device())
    if progress and rank == 0:
        print(f"[{cfg.name}] {len(train_p)} prompts x {cfg.k} samples; {len(held_p)} held-out prompts")
    dev_temperature = None
    if cfg.temperatures:
        with record(f"choose the temperature on {len(held_p)} held-out prompts"):
            chosen, dev_temperature = choose_temperature(model, tok, template, held_p, cfg, work, load_scorer,
                                                         progress)
        cfg = cfg.model_copy(update={"temperature": chosen})
    sampler = sampling_model(model, cfg.sample_precision)
    with record(f"sample {cfg.k} replies per prompt"):
        samples, finished = sample_replies(sampler, tok, template, train_p, cfg, work / "samples.jsonl", progress)
    sample_dtype = str(next(sampler.parameters()).dtype).removeprefix("torch.")
    del sampler
    release_memory()
    # the kept reply is chosen in score_precision's arithmetic; the held-out rewards below stay fp32
    with record("score the samples"), autocast(cfg.score_precision):
        scorer = load_scorer()
        rewards = score_samples(scorer, train_p, samples, f"{cfg.name} score" if progress else None)
    # every sample is scored (the distributions and max-of-K keep them all); a reply cut at the token cap
    # is kept only under `open` (trained without an end of turn) or `keep` (the old rule), never by `drop`
    whole = torch.tensor(finished, dtype=torch.bool)
    best = select_best(rewards, whole if cfg.truncated == "drop" else None)
    has = best >= 0
    pick = best.clamp(min=0).unsqueeze(1)
    kept = rewards.gather(1, pick).squeeze(1)[has]
    kept_cut = has & ~whole.gather(1, pick).squeeze(1)  # per prompt: its kept reply hit the cap
    with record("held-out greedy reward, parent"):
        held_before = heldout_greedy_reward(model, tok, template, held_p, scorer, cfg)
    del model, scorer
    release_memory()  # the parent and both reward models: the SFT starts from the floor
    def reply(i: int) -> dict:
        msg = {"role": "assistant", "content": samples[i][int(best[i])]}
        return {**msg, "open": True} if cfg.truncated == "open" and kept_cut[i] else msg

    examples = [Example(messages=[*p["messages"], reply(i)], source=p["source"], index=p["index"],
                        meta={"reward": float(rewards[i, int(best[i])])})
                for i, p in enumerate(train_p) if best[i] >= 0]
    empty = sum(1 for e in examples if not e.messages[-1]["content"].strip())
    examples = [e for e in examples if e.messages[-1]["content"].strip()]
    if not examples:
        raise HerdError(f"stage {cfg.name}: no prompt kept a sample (every one empty, or cut at max_new_tokens "
                        f"{cfg.max_new_tokens}: raise it, or set truncated: open)")
    barrier()  # every rank decides alike whether the SFT run is finished already
    if is_artifact(sft_out):
        sft_summary = read_lineage(sft_out).get("metrics") or {}
    else:
        # the SFT stage kind, through the registry: one stage never imports another
        sft = StageContext(parent=parent, template=template, out=sft_out, name=name, recipe=recipe, resume=resume,
                           progress=progress, train=examples, data=data_records)
        _, sft_summary = STAGES["sft"](cfg.sft, sft)
    barrier()  # rank 0 published the SFT model
    with record("held-out greedy reward, derived"):
        new_model = load_model(sft_out).to(device())
        scorer = load_scorer()
        held_after = heldout_greedy_reward(new_model, tok, template, held_p, scorer, cfg)
    del new_model, scorer
    release_memory()
    summary = {"prompts": len(train_p), "k": cfg.k, "temperature": cfg.temperature,
               **({"temperature_dev": dev_temperature} if dev_temperature else {}), "sampled_in": sample_dtype,
               "scored_in": arithmetic(cfg.score_precision),
               "reward_sampled": distribution(rewards), "reward_kept": distribution(kept),
               "max_of_k": expected_max_of_k(rewards), "empty_kept_dropped": empty,
               "samples_truncated": int((~whole).sum()), "truncated": cfg.truncated,
               "prompts_without_a_whole_sample": int((~whole.any(dim=1)).sum()),
               "kept_truncated": int(kept_cut.sum()),
               "heldout_greedy_reward_parent": held_before, "heldout_greedy_reward": held_after,
               "reward_models": [str(p) for p in rm_paths],
               "sft": {k: v for k, v in sft_summary.items() if k not in ("data", "data_report")},
               "data": report.as_dict(), "world_size": world}
    if rank != 0:
        return out, summary
    tmp = staging_dir(out)
    tmp.rmdir()
    shutil.copytree(sft_out, tmp)  # copy, not move: a kill here leaves the finished SFT run for a resume
    with open(tmp / SAMPLES_FILE, "w") as f:
        for i, p in enumerate(train_p):
            f.write(json.dumps({"prompt": p["messages"], "replies": samples[i], "finished": finished[i],
                                "rewards": [round(x, 5) for x in rewards[i].tolist()],
                                "kept": int(best[i]) if best[i] >= 0 else None}, ensure_ascii=False) + "\n")
    lineage = read_lineage(tmp)
    lineage["stage"] = {"name": cfg.name, "kind": cfg.kind, "config": cfg.model_dump(mode="json"),
                        **arithmetic_record(cfg)}
    lineage["metrics"] = summary
    lineage = write_lineage(tmp, lineage)
    md = (f"Rejection sampling: {len(train_p)} prompts x {cfg.k} samples; mean reward sampled "
          f"{summary['reward_sampled'].get('mean')}, kept {summary['reward_kept'].get('mean')}.")
    (tmp / "README.md").write_text(model_card(lineage, extra_md=md))
    publish(tmp, out)
    shutil.rmtree(sft_out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return out, summary


@STAGES.register("rejection_sampling")
def run(cfg: RejectionSamplingStage, ctx: StageContext) -> tuple[Path, dict]:
    """The registered entry point: ``herd derive`` calls every stage kind this way."""
    return run_rejection_sampling(cfg, ctx.parent, ctx.template, ctx.out, name=ctx.name, resume=ctx.resume, recipe=ctx.recipe,
                                  progress=ctx.progress, workspace=ctx.workspace)
