"""The Llama-2-Chat alignment stages under a 2-process torchrun (gloo on CPU) reach what one process does.

One toy recipe runs SFT → reward model → rejection sampling → DPO → PPO through ``herd derive``, once in one
process and once under torchrun (DDP); a second runs the reward model and DPO sharded with FSDP2. The
ranks share sampling and scoring chunk by chunk with the single-process seeds, so the sampled replies
are the same; the losses and weights agree to float tolerance; every stage starts from the previous
stage's artifact on every rank (the lineage chain)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from herd.artifacts import read_lineage
from herd.core.paths import repo_root
from tests.align_helpers import toy_recipe

PAIRS = [{"name": "p", "path": "pairs.jsonl", "format": "preference"}]
PAIR = {"data": PAIRS, "eval_size": 6, "max_train_pairs": 24, "global_batch": 6, "micro_batch": 2,
        "lr": 1e-3, "precision": "fp32", "max_len": 128}


def _derive(recipe: Path, out: Path, procs: int) -> None:
    cmd = [sys.executable, "-m", "herd.cli"]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", "herd.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")  # same kernels in both runs
    proc = subprocess.run(cmd + ["derive", str(recipe), "--base", "tiny", "--profile", "full", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=repo_root())
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"


def _stages(ws: Path) -> list[Path]:
    return sorted(p for p in ws.iterdir() if p.is_dir() and p.name[:2].isdigit() and "." not in p.name)


def _losses(stage: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (stage / "metrics.jsonl").read_text().splitlines()]


def _close_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < atol, (a.name, worst)


def _compare(one: Path, two: Path, kinds: list[str]) -> tuple[list[Path], list[Path]]:
    s1, s2 = _stages(one), _stages(two)
    assert [read_lineage(d)["stage"]["kind"] for d in s2] == kinds
    assert len(s1) == len(s2)
    for a, b in zip(s1, s2):
        assert (read_lineage(b)["metrics"] or {}).get("world_size", 2) == 2, b.name
        la, lb = _losses(a), _losses(b)
        assert len(la) == len(lb) > 0 and all(abs(x - y) < 1e-4 * max(1.0, abs(x)) for x, y in zip(la, lb)), \
            (a.name, la, lb)
        _close_weights(a, b, 2e-4)
    return s1, s2


@pytest.mark.slow
def test_llama2chat_stages_under_torchrun_match_one_process(tmp_path):
    stages = [
        {"name": "sft", "kind": "sft", "max_steps": 2, "global_batch": 4, "max_len": 128, "precision": "fp32"},
        # the pair stages run each pair's prompt once for both replies (shared_prompt) under DDP
        {"name": "rm", "kind": "reward_model", **PAIR, "shared_prompt": True},
        {"name": "rs", "kind": "rejection_sampling", "data": PAIRS, "reward_model": "rm", "eval_size": 4,
         "max_prompts": 8, "k": 2, "max_new_tokens": 6, "gen_batch": 2, "score_batch": 4, "truncated": "open",
         "sft": {"max_steps": 2, "global_batch": 4, "lr": 1e-3, "max_len": 128, "precision": "fp32"}},
        {"name": "dpo", "kind": "dpo", **PAIR, "shared_prompt": True},
        {"name": "ppo", "kind": "ppo", "data": PAIRS, "reward_model": "rm", "eval_size": 2, "iterations": 2,
         "batch_size": 6, "mini_batch": 6, "micro_batch": 2, "gen_batch": 2, "max_new_tokens": 6, "lr": 1e-4,
         "precision": "fp32"}]
    # the scorecard (rank 0, after the other ranks finished) scores with the reward model too
    recipe = toy_recipe(tmp_path / "r", stages, evals={"reward_win_rate": {"reward_model": "rm", "baseline": "sft",
                                                                        "n": 4, "max_new_tokens": 6}})
    _derive(recipe, tmp_path / "one", 1)
    _derive(recipe, tmp_path / "two", 2)
    s1, s2 = _compare(tmp_path / "one", tmp_path / "two",
                      ["sft", "reward_model", "rejection_sampling", "dpo", "ppo"])
    c1, c2 = (json.loads((d / "scorecard.json").read_text()) for d in (s1[-1], s2[-1]))
    r1, r2 = ({r["stage"]: r["win_rate"] for r in c["extra"]["reward_win_rate"]} for c in (c1, c2))
    assert r1.keys() == r2.keys() == {"rs", "dpo", "ppo"}
    # the ranks shared the sampling with the single process's chunks and seeds: the same replies
    rs1, rs2 = ((d / "rejection_samples.jsonl").read_text().splitlines() for d in (s1[2], s2[2]))
    assert [json.loads(x)["replies"] for x in rs1] == [json.loads(x)["replies"] for x in rs2]
    p1, p2 = (json.loads((d / "ppo_samples.jsonl").read_text().splitlines()[0])["reply"] for d in (s1[4], s2[4]))
    assert p1 == p2
    # every rank continued from the previous policy: the chain skips the reward model
    lin = [read_lineage(d) for d in s2]
    assert lin[2]["parent"]["lineage_id"] == lin[0]["id"] and lin[3]["parent"]["lineage_id"] == lin[2]["id"]
    assert lin[4]["parent"]["lineage_id"] == lin[3]["id"]
    m1, m2 = (read_lineage(d)["metrics"]["heldout"] for d in (s1[1], s2[1]))
    assert m1["pairs"] == m2["pairs"] == 6 and m1["accuracy"] == m2["accuracy"]


@pytest.mark.slow
def test_pair_stages_sharded_with_fsdp2_match_one_process(tmp_path):
    stages = [{"name": "rm", "kind": "reward_model", **PAIR, "fsdp": True},
              {"name": "dpo", "kind": "dpo", **PAIR, "fsdp": True}]
    recipe = toy_recipe(tmp_path / "r", stages)
    _derive(recipe, tmp_path / "one", 1)
    _derive(recipe, tmp_path / "two", 2)
    s1, s2 = _compare(tmp_path / "one", tmp_path / "two", ["reward_model", "dpo"])
    d1, d2 = (read_lineage(d)["metrics"]["heldout"] for d in (s1[1], s2[1]))
    assert d1["pairs"] == d2["pairs"] == 6 and abs(d1["reward_margin"] - d2["reward_margin"]) < 1e-4
