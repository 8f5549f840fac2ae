"""The ``dpo`` stage: Direct Preference Optimization of the parent against itself, frozen, as reference.

The reference log-probs ``log π0(reply | prompt)`` of every pair are computed once, before training,
with the parent's weights and kept in the work folder: the reference is never updated, so this is
exact, halves the memory of keeping a second model, and makes a resumed run use the very same numbers.
They are computed over the very micro-batches the training loop will run (same pairs together, same
padding, same autocast), so policy and reference agree bit for bit at step 0 and the loss starts at
log 2: in bf16 a sequence's log-prob depends on what it is padded with, and length-sorted reference
batches put SmolLM2's step-0 loss at 0.7023, a bias the size of the signal DPO learns from.
The policy is the parent (full fine-tuning) or the parent with a fresh LoRA adapter (merged into the
saved weights, like the sft stage). The summary reports DPO's implicit-reward accuracy and margins
``β[(log π − log π0)(chosen) − (…)(rejected)]`` on held-out pairs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from herd.artifacts import read_lineage, save_model_folder, staging_dir, template_record
from herd.base import BaseRef, load_model, load_tokenizer
from herd.core.phases import record
from herd.core.registry import STAGES
from herd.engine.distributed import barrier, map_rows
from herd.engine.logprobs import batched_logps, pad_right, prompt_logps, sequence_logps
from herd.engine.losses import dpo_loss
from herd.engine.pair_loop import forward_layouts, pair_loop_config, train_items
from herd.engine.training import autocast, device, dist_env, full_state_dict
from herd.stages import StageContext
from herd.stages.common import finish_artifact
from herd.stages.configs import DPOStage
from herd.stages.pairs import EncodedPairs, load_encoded_pairs
from herd.stages.sampling import heldout_greedy_reward, rejection_dev
from herd.templates import Template


def pair_logps(model, enc: EncodedPairs, pad_id: int, batch_size: int, precision: str = "fp32"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) sequence log-probs of encoded pairs under ``model``, no gradient, computed
    with the training loop's autocast so reference and policy agree exactly at step 0."""
    def logps(seqs):  # under torchrun the ranks share the batches; every rank gets all values
        with autocast(precision):
            return map_rows(lambda part: batched_logps(model, part, pad_id, batch_size, device()), seqs,
                            batch_size, key=len)

    return logps(enc.chosen), logps(enc.rejected)


def _reference(work: Path, name: str, model, enc: EncodedPairs, pad_id: int, batch_size: int, precision: str,
               key: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs, cached under ``work`` (the cache is trusted only for the same pairs)."""
    path = work / f"ref_logps_{name}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == repr(key):
            return saved["chosen"], saved["rejected"]
    chosen, rejected = pair_logps(model, enc, pad_id, batch_size, precision)
    if dist_env()[0] == 0:
        tmp = path.with_suffix(".tmp")
        torch.save({"key": repr(key), "chosen": chosen, "rejected": rejected}, tmp)
        tmp.replace(path)
    return chosen, rejected


def _group_logps(model, enc: EncodedPairs, idx, pad_id: int, *, shared: bool = False,
                 checkpoint: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) log-probs of the pairs ``idx``: the layout both the policy's step and its
    reference use. ``shared``: each pair's prompt once, its two replies off its keys and values
    (:func:`herd.engine.logprobs.prompt_logps`); else ONE forward, chosen rows then rejected rows padded
    together."""
    if shared:
        return torch.stack([prompt_logps(model, [enc.chosen[i], enc.rejected[i]], pad_id, checkpoint=checkpoint)
                            for i in idx]).T
    dev = next(model.parameters()).device
    ids, att, lab = pad_right([enc.chosen[i] for i in idx] + [enc.rejected[i] for i in idx], pad_id)
    return sequence_logps(model, ids.to(dev), att.to(dev), lab.to(dev)).chunk(2)


def _layout_reference(work: Path, model, enc: EncodedPairs, pad_id: int, layouts: list[tuple[int, ...]],
                      precision: str, key: dict, shared: bool = False
                      ) -> dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]]:
    """Reference log-probs of the training pairs, one entry per micro-batch of the loop
    (:func:`herd.engine.pair_loop.forward_layouts`), each computed as the policy's forward will be;
    cached under ``work`` per rank (trusted only for the same pairs and loop plan)."""
    rank = dist_env()[0]
    path = work / f"ref_logps_train.rank{rank}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved.get("key") == repr(key):
            return {tuple(p): (c, r) for p, c, r in zip(saved["parts"], saved["chosen"], saved["rejected"],
                                                        strict=True)}
    out: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.no_grad():
        for part in layouts:
            if part not in out:
                with autocast(precision):
                    c, r = _group_logps(model, enc, part, pad_id, shared=shared)
                out[part] = (c.float().cpu(), r.float().cpu())
    tmp = path.with_suffix(".tmp")
    torch.save({"key": repr(key), "parts": [list(p) for p in out], "chosen": [v[0] for v in out.values()],
                "rejected": [v[1] for v in out.values()]}, tmp)
    tmp.replace(path)
    return out


def dpo_metrics(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> dict:
    """Held-out DPO numbers: loss, implicit-reward accuracy (ties wrong) and margins, log-prob shifts."""
    if pc.numel() == 0:
        return {"pairs": 0}
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta)
    return {"pairs": int(pc.numel()), "loss": round(float(losses.mean()), 5),
            "reward_accuracy": round(float((chosen_r > rejected_r).float().mean()), 4),
            "reward_margin": round(float((chosen_r - rejected_r).mean()), 5),
            "chosen_reward": round(float(chosen_r.mean()), 5), "rejected_reward": round(float(rejected_r.mean()), 5),
            "chosen_logp_shift": round(float((pc - rc).mean()), 5),
            "rejected_logp_shift": round(float((pr - rr).mean()), 5)}


def run_dpo(cfg: DPOStage, parent: BaseRef, template: Template, out: Path, *, name: str, resume: bool = False,
            recipe: dict | None = None, progress: bool = True, workspace: Path | None = None,
            earlier: dict[str, Path] | None = None) -> tuple[Path, dict]:
    """Train the parent with DPO on ``cfg.data`` (and ``cfg.pairs_from``'s samples, a stage of ``earlier``)
    and write the artifact at ``out``; returns (path, summary)."""
    rank, world = dist_env()
    tok = load_tokenizer(parent)
    pad = tok.pad_token_id
    data, train, held = load_encoded_pairs(cfg, recipe, template, tok, progress and rank == 0, earlier)
    work = out.with_name(out.name + ".work")
    if not resume and rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    barrier()
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(parent).to(device())
    key = {"parent": parent.sha256, "template": template.jinja, "max_len": cfg.max_len, "precision": cfg.precision}
    loop = pair_loop_config(cfg, progress)
    layouts = forward_layouts(len(train), loop)
    ref = _layout_reference(work, model, train, pad, layouts, cfg.precision,
                            {**key, "pairs": [p.key() for p in train.pairs], "layouts": layouts,
                             "shared_prompt": cfg.shared_prompt}, shared=cfg.shared_prompt)
    held_ref = _reference(work, "heldout", model, held, pad, cfg.eval_batch, cfg.precision,
                          {**key, "pairs": [p.key() for p in held.pairs]}) if held.pairs else None
    if cfg.method == "lora":
        from herd.engine.lora import apply_lora

        torch.manual_seed(cfg.seed)
        model = apply_lora(model, cfg.lora)

    def loss_fn(idx: list[int]):
        dev = next(model.parameters()).device
        pc, pr = _group_logps(model, train, idx, pad, shared=cfg.shared_prompt, checkpoint=cfg.gradient_checkpointing)
        ref_c, ref_r = ref[tuple(idx)]
        losses, cr, rr = dpo_loss(pc, pr, ref_c.to(dev), ref_r.to(dev), cfg.beta)
        return losses.sum(), {"reward_accuracy": float((cr > rr).sum()), "reward_margin": float((cr - rr).sum())}

    result = train_items(model, len(train), loss_fn, loop, work, resume=resume,
                         desc=cfg.name)
    if world > 1:  # the trained model is wrapped or sharded: evaluate and save a plain copy of its weights
        state = full_state_dict(model, all_ranks=True)
        model = load_model(parent)
        if cfg.method == "lora":
            from herd.engine.lora import apply_lora

            model = apply_lora(model, cfg.lora)
        model.load_state_dict(state)
        model.to(device())
    heldout = {"pairs": 0}
    if held_ref is not None:
        pc, pr = pair_logps(model, held, pad, cfg.eval_batch, cfg.precision)
        heldout = dpo_metrics(pc, pr, held_ref[0], held_ref[1], cfg.beta)
    hist = result.history
    summary = {"steps": result.steps, "train_pairs": len(train), "seconds": round(result.seconds, 1),
               "beta": cfg.beta, "first_loss": hist[0]["loss"] if hist else None,
               "final_loss": hist[-1]["loss"] if hist else None, "heldout": heldout,
               "data": {"read": data.report.as_dict(), "duplicates": data.duplicates,
                        "dropped_train": dict(train.dropped), "dropped_heldout": dict(held.dropped)},
               "world_size": world}
    if cfg.pairs_from:  # how the sampled pairs the policy trained on look, and the policy on that stage's dev
        ps = [p for p in train.pairs if "reward_gap" in p.meta]
        summary["pairs_from"] = {"stage": cfg.pairs_from, "train_pairs": len(ps),
                                 "mean_reward_gap": round(sum(p.meta["reward_gap"] for p in ps) / max(len(ps), 1), 5),
                                 "chosen_open": sum(p.chosen_open for p in ps),
                                 "rejected_open": sum(p.rejected_open for p in ps)}
        summary.update(_dev_greedy_reward(model, tok, template, parent, cfg.pairs_from, recipe, workspace, earlier))
    if rank != 0:
        return out, summary
    tmp = staging_dir(out)
    model = model.cpu()
    if cfg.method == "lora":
        model.save_pretrained(tmp / "adapter")
        model = model.merge_and_unload()
    save_model_folder(model, tok, template, tmp)
    md = (f"DPO (β {cfg.beta}): held-out implicit-reward accuracy {heldout.get('reward_accuracy')} on "
          f"{heldout.get('pairs')} pairs, margin {heldout.get('reward_margin')}.")
    finish_artifact(tmp, out, name=name, parent=parent, template_rec=template_record(template, tok), cfg=cfg,
                    recipe=recipe, data=data.records, metrics=summary, history=hist, extra_md=md)
    shutil.rmtree(work, ignore_errors=True)
    return out, summary


def _dev_greedy_reward(model, tok, template: Template, parent: BaseRef, stage: str, recipe: dict | None,
                       workspace: Path | None, earlier: dict[str, Path] | None) -> dict:
    """The trained policy's greedy reward on the ``pairs_from`` stage's held-out prompts (never sampled for
    pairs), beside its parent's: how a setting such as the learning rate is chosen without the test
    questions. The parent's is the rejection stage's own figure when the parent is that stage."""
    rs_dir = (earlier or {})[stage]
    dev = rejection_dev(rs_dir, template, recipe=recipe, workspace=workspace, earlier=earlier)
    if dev is None:
        return {}
    model.eval()
    with record(f"greedy replies to the dev prompts of stage {stage}"):
        after = heldout_greedy_reward(model, tok, template, dev.prompts, dev.scorer, dev.cfg)
        if Path(parent.path).resolve() == Path(rs_dir).resolve():
            before = read_lineage(rs_dir)["metrics"].get("heldout_greedy_reward")
        else:
            before = heldout_greedy_reward(load_model(parent).to(device()), tok, template, dev.prompts, dev.scorer,
                                           dev.cfg)
    return {"heldout_greedy_reward_parent": before, "heldout_greedy_reward": after,
            "heldout_greedy_reward_prompts": f"the {after.get('n', 0)} held-out prompts of stage {stage}"}


@STAGES.register("dpo")
def run(cfg: DPOStage, ctx: StageContext) -> tuple[Path, dict]:
    """The registered entry point: ``herd derive`` calls every stage kind this way."""
    return run_dpo(cfg, ctx.parent, ctx.template, ctx.out, name=ctx.name, resume=ctx.resume, recipe=ctx.recipe,
                   progress=ctx.progress, workspace=ctx.workspace, earlier=ctx.earlier)
