"""The alignment stages end to end on the tiny random Llama: reward model, DPO, rejection sampling.

The toy preference set is separable on purpose (every chosen reply ends with the word "banana"), so a
reward model that learns anything reaches near-perfect held-out accuracy within a few steps."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from herd.artifacts import read_lineage
from herd.core.paths import repo_root
from herd.stages.configs import DPOStage, RejectionSamplingStage, RewardModelStage
from herd.templates import get_template

torch.set_num_threads(1)

WORDS = "apple river stone cloud green quick table music paper light window summer".split()
TEMPLATE = "llama2_chat"


def toy_pairs(path: Path, n: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    recs = []
    for _ in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(5))
        a, b = (" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(2))
        recs.append({"prompt": f"Tell me about {q}", "chosen": f"{a} banana", "rejected": b})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def rm_config(data: Path, **kw) -> RewardModelStage:
    base = dict(data=[{"name": "toy", "path": str(data), "format": "preference"}], eval_size=20, global_batch=8,
                micro_batch=8, lr=1e-3, min_warmup_steps=0, precision="fp32", max_len=128)
    return RewardModelStage(**{**base, **kw})


def dpo_config(data: Path, **kw) -> DPOStage:
    base = dict(data=[{"name": "toy", "path": str(data), "format": "preference"}], eval_size=20, global_batch=8,
                micro_batch=4, lr=1e-3, precision="fp32", max_len=128)
    return DPOStage(**{**base, **kw})


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    return toy_pairs(tmp_path_factory.mktemp("toy") / "toy.jsonl")


@pytest.fixture(scope="module")
def reward_artifact(tmp_path_factory, toy_data, tiny_ref):
    from herd.stages.reward_model import run_reward_model

    out = tmp_path_factory.mktemp("rm") / "01-reward-abc"
    path, summary = run_reward_model(rm_config(toy_data), tiny_ref, get_template(TEMPLATE), out, name="toy",
                                     progress=False)
    return path, summary


def test_configs_are_strict(toy_data):
    with pytest.raises(ValidationError):
        rm_config(toy_data, nonsense=1)
    with pytest.raises(ValidationError, match="a dpo stage needs pairs"):
        DPOStage(data=[])
    with pytest.raises(ValidationError, match="shared_prompt does not support fsdp"):
        rm_config(toy_data, shared_prompt=True, fsdp=True)
    cfg = RewardModelStage(data=[{"name": "x", "path": "p", "format": "hh_rlhf"}])
    assert (cfg.kind, cfg.lr, cfg.min_lr_ratio, cfg.min_warmup_steps, cfg.global_batch) == \
        ("reward_model", 1e-5, 0.1, 5, 512)
    assert RejectionSamplingStage(data=cfg.data, reward_model="rm").sft.kind == "sft"


def test_reward_model_learns_separable_pairs(reward_artifact):
    path, summary = reward_artifact
    assert summary["heldout"]["pairs"] == 20
    assert summary["heldout"]["accuracy"] > 0.9, summary
    assert summary["final_loss"] < summary["first_loss"]
    lineage = read_lineage(path)
    assert lineage["stage"]["kind"] == "reward_model" and lineage["metrics"]["heldout"]["accuracy"] > 0.9
    assert lineage["data"][0]["records"] == 120 and (path / "heldout_rewards.jsonl").is_file()
    assert not path.with_name(path.name + ".work").exists() and not path.with_name(path.name + ".partial").exists()


def test_reward_artifact_loads_in_plain_transformers(reward_artifact, tokenizer):
    """AutoModelForSequenceClassification's own pooling (pad id) gives herd's reward (last real token)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from herd.stages.reward_model import load_reward_model

    path, _ = reward_artifact
    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    rm = load_reward_model(path)
    prompt = [{"role": "user", "content": "Tell me about apple river"}]
    replies = ["stone cloud banana", "stone cloud green quick table"]
    ours = rm.score([prompt, prompt], replies)
    template = get_template(TEMPLATE)
    for reply, want in zip(replies, ours):
        text = template.render_text([*prompt, {"role": "assistant", "content": reply}], tok)[0]
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            got = model(**enc).logits[0, 0]
        assert float(got) == pytest.approx(float(want), abs=1e-4)
    assert ours[0] > ours[1]


def test_replies_to_one_prompt_score_off_one_prompt_pass_as_if_whole(reward_artifact, capsys):
    """Rejection sampling's K replies share their prompt: scored off one pass of it, each reward is the
    one the sequence gets scored alone (batch 1, no cache), in input order, across suffix batches."""
    from herd.engine.logprobs import encode_reply
    from herd.engine.reward_model import prompt_groups, score_encoded
    from herd.stages.reward_model import load_reward_model

    rm = load_reward_model(reward_artifact[0])
    long = [{"role": "system", "content": "Answer briefly and kindly. " * 4},
            {"role": "user", "content": "Tell me about apple river and the stone table near it"}]
    other = [{"role": "user", "content": "Which cloud is green, quick or slow, and why would a banana care?"}]
    alone = [{"role": "user", "content": "Hi"}]
    prompts = [long, other, long, alone, long, other, long, long]
    replies = ["stone cloud banana", "green", "stone cloud green quick table apple river stone", "hello there",
               "", "quick quick slow", "apple", "table table table table table table table table"]
    seqs = [encode_reply(rm.template, rm.tokenizer, p, r) for p, r in zip(prompts, replies)]
    groups, singles = prompt_groups(seqs)
    assert sorted(map(sorted, groups)) == [[0, 2, 4, 6, 7], [1, 5]] and singles == [3]
    want = torch.cat([score_encoded(rm.model, [s], rm.pad_id, 1) for s in seqs])
    got = rm.score(prompts, replies, batch_size=2, desc="rs score")  # `long`'s five replies: three batches
    assert "[rs score] 8/8" in capsys.readouterr().err  # the count reaches every reply (log-mode line)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-4)
    assert len(set(round(x, 3) for x in want.tolist())) > 4  # the replies do score differently


@pytest.mark.parametrize("checkpoint", [False, True])
def test_a_pair_trained_off_one_prompt_pass_gets_the_whole_pairs_loss_and_gradients(reward_artifact, checkpoint):
    """Training scores a pair's chosen and rejected off one pass of their prompt: the Bradley-Terry loss and
    every parameter's gradient are those of scoring both sequences whole, with the layers checkpointed too
    (the prefix's keys and values carry the gradient back into its pass; a recomputed layer reads the same)."""
    from herd.engine.logprobs import encode_reply, pad_right
    from herd.engine.losses import bradley_terry_loss
    from herd.engine.reward_model import group_prefix_len, pooled_rewards, prompt_rewards
    from herd.stages.reward_model import load_reward_model

    rm = load_reward_model(reward_artifact[0])
    model = rm.model.float().train()
    prompt = [{"role": "system", "content": "Answer briefly and kindly. " * 4},
              {"role": "user", "content": "Tell me about apple river and the stone table near it"}]
    pairs = [("stone cloud green quick table apple river stone", "apple"), ("green", "table table table table")]
    seqs = [[encode_reply(rm.template, rm.tokenizer, prompt, r) for r in pair] for pair in pairs]
    assert all(group_prefix_len([c.input_ids, r.input_ids]) >= 16 for c, r in seqs)  # the shared path runs

    def loss_and_grads(shared: bool):
        model.zero_grad()
        if shared:
            rc, rr = torch.stack([prompt_rewards(model, [c.input_ids, r.input_ids], rm.pad_id, checkpoint=checkpoint)
                                  for c, r in seqs]).T
        else:
            ids, att, _ = pad_right([c for c, _ in seqs] + [r for _, r in seqs], rm.pad_id)
            rc, rr = pooled_rewards(model, ids, att).chunk(2)
        loss = bradley_terry_loss(rc, rr, torch.zeros(len(seqs))).sum()
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, g_whole = loss_and_grads(False)
    shared, g_shared = loss_and_grads(True)
    assert shared == pytest.approx(whole, abs=1e-5)
    assert g_shared.keys() == g_whole.keys() and len(g_whole) > 10
    emb = "model.embed_tokens.weight"
    prompt_ids = seqs[0][0].input_ids[:group_prefix_len([s.input_ids for s in seqs[0]])]
    assert float(g_whole[emb][prompt_ids].abs().sum()) > 0  # the prompt's tokens do get a gradient
    for n in g_whole:
        scale = float(g_whole[n].abs().max())
        assert float((g_shared[n] - g_whole[n]).abs().max()) <= 1e-4 * max(scale, 1e-3), n
    model.zero_grad()


def _run_killed(kind: str, cfg, out: Path, kill_after: int) -> subprocess.CompletedProcess:
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from pathlib import Path\n"
        "from herd.base import resolve_base\n"
        "from herd.templates import get_template\n"
        f"from herd.stages import configs as config, {'reward_model' if kind == 'reward_model' else 'dpo'} as mod\n"
        f"cls = {{'reward_model': config.RewardModelStage, 'dpo': config.DPOStage}}['{kind}']\n"
        "cfg = cls.model_validate_json(sys.argv[1])\n"
        f"fn = {{'reward_model': 'run_reward_model', 'dpo': 'run_dpo'}}['{kind}']\n"
        f"getattr(mod, fn)(cfg, resolve_base('tiny'), get_template('{TEMPLATE}'), Path(sys.argv[2]), name='toy',"
        " progress=False)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HERD_TEST_KILL_AFTER_STEP=str(kill_after))
    return subprocess.run([sys.executable, "-c", code, cfg.model_dump_json(), str(out)], capture_output=True,
                          text=True, env=env, cwd=repo_root())


def _kill_resume_identical(kind: str, cfg, tmp_path: Path, tiny_ref, run) -> None:
    template = get_template(TEMPLATE)
    straight, _ = run(cfg, tiny_ref, template, tmp_path / "straight", name="toy", progress=False)
    killed = _run_killed(kind, cfg, tmp_path / "killed", kill_after=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = json.loads((tmp_path / "killed.work" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and not (tmp_path / "killed").exists()
    resumed, _ = run(cfg, tiny_ref, template, tmp_path / "killed", name="toy", resume=True, progress=False)
    h1 = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    h2 = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert len(h1) == len(h2) > 4 and [h["loss"] for h in h1] == [h["loss"] for h in h2]
    w1, w2 = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.slow
def test_reward_model_kill_and_resume_is_identical(tmp_path, toy_data, tiny_ref):
    from herd.stages.reward_model import run_reward_model

    _kill_resume_identical("reward_model", rm_config(toy_data, checkpoint_every=2, max_train_pairs=64),
                           tmp_path, tiny_ref, run_reward_model)


def test_dpo_prefers_chosen_on_heldout(tmp_path, toy_data, tiny_ref):
    from transformers import AutoModelForCausalLM

    from herd.stages.dpo import run_dpo

    path, summary = run_dpo(dpo_config(toy_data), tiny_ref, get_template(TEMPLATE), tmp_path / "dpo",
                            name="toy", progress=False)
    held = summary["heldout"]
    assert held["pairs"] == 20 and held["reward_accuracy"] > 0.9 and held["reward_margin"] > 0, held
    assert held["loss"] < 0.6931  # below the policy == reference value log 2
    assert summary["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # step 1 starts at the reference
    assert read_lineage(path)["stage"]["kind"] == "dpo"
    AutoModelForCausalLM.from_pretrained(str(path))  # plain transformers loads the artifact
    assert not list(tmp_path.glob("*.work"))


def _rejection_artifact(folder: Path, n: int = 48, seed: int = 0) -> Path:
    """A rejection stage's ``rejection_samples.jsonl``: 4 samples a prompt, the reward highest for the one
    ending in "banana"; sample 3 is cut at the cap. Plus one prompt whose best sample is empty and one
    whose samples are all alike (neither gives a pair)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        replies = [" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(4)]
        good = i % 4
        replies[good] += " banana"
        rewards = [round(0.2 + 0.1 * rng.random(), 5) for _ in range(4)]
        rewards[good] = round(0.6 + 0.3 * rng.random(), 5)
        rows.append({"prompt": [{"role": "user", "content": f"Tell me about {' '.join(rng.sample(WORDS, 4))} {i}"}],
                     "replies": replies, "finished": [True, True, True, False], "rewards": rewards, "kept": good})
    rows.append({"prompt": [{"role": "user", "content": "empty best"}], "replies": ["", "a", "b", "c"],
                 "finished": [True] * 4, "rewards": [0.9, 0.1, 0.2, 0.3], "kept": 0})
    rows.append({"prompt": [{"role": "user", "content": "all alike"}], "replies": ["same"] * 4,
                 "finished": [True] * 4, "rewards": [0.5, 0.4, 0.3, 0.2], "kept": 0})
    folder.mkdir(parents=True)
    (folder / "rejection_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_sampled_pairs_are_each_prompts_best_against_its_worst(tmp_path):
    from herd.data.report import DataReport
    from herd.stages.pairs import sample_pairs

    folder = _rejection_artifact(tmp_path / "04-rejection-x")
    rows = [json.loads(x) for x in (folder / "rejection_samples.jsonl").read_text().splitlines()]
    report = DataReport()
    pairs = sample_pairs(folder / "rejection_samples.jsonl", report=report)
    assert len(pairs) == 48 and report.count("dropped") == 2
    gaps = [p.meta["reward_gap"] for p in pairs]
    assert gaps == sorted(gaps, reverse=True)  # largest gap first: max_train_pairs keeps the clearest
    for p in pairs:
        row = rows[p.index]
        hi, lo = row["rewards"].index(max(row["rewards"])), row["rewards"].index(min(row["rewards"]))
        assert (p.prompt, p.chosen, p.rejected) == (row["prompt"], row["replies"][hi], row["replies"][lo])
        assert (p.chosen_open, p.rejected_open) == (hi == 3, lo == 3)
        assert p.meta["reward_gap"] == pytest.approx(row["rewards"][hi] - row["rewards"][lo], abs=1e-5)
    assert any(p.chosen_open for p in pairs) and any(p.rejected_open for p in pairs)
    assert len(sample_pairs(folder / "rejection_samples.jsonl", min_gap=0.5)) < 48


def test_sampled_pairs_survive_a_reply_holding_a_unicode_line_separator(tmp_path):
    """A sample may hold U+2028, U+0085 or a form feed; the samples file (written with ensure_ascii=False)
    is still one prompt per line when read back (a 1.2-temperature llama2chat run drew a U+2028)."""
    from herd.stages.pairs import sample_pairs

    folder = _rejection_artifact(tmp_path / "04-rejection-x", n=6)
    path = folder / "rejection_samples.jsonl"
    rows = [json.loads(x) for x in path.read_text().split("\n") if x]
    rows[2]["replies"] = [r + " \u2028 then\x85 more\x0c" for r in rows[2]["replies"]]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert len(path.read_text(encoding="utf-8").splitlines()) > len(rows) == 8  # what the reader must not split on
    pairs = sample_pairs(path)
    assert len(pairs) == 6 and any("\u2028" in p.chosen for p in pairs)


def test_an_open_pair_side_is_trained_without_an_end_of_turn(tokenizer):
    from herd.engine.logprobs import encode_reply

    prompt = [{"role": "user", "content": "Tell me about clouds"}]
    whole = encode_reply(get_template(TEMPLATE), tokenizer, prompt, "green quick table")
    cut = encode_reply(get_template(TEMPLATE), tokenizer, prompt, "green quick table", open_end=True)
    trained = [[t for t in e.labels if t != -100] for e in (whole, cut)]
    assert cut.input_ids == whole.input_ids[: len(cut)] and trained[0][: len(trained[1])] == trained[1]
    assert len(trained[1]) < len(trained[0])  # the end of turn is the difference
    assert tokenizer.decode(trained[1]).strip() == "green quick table"


def test_dpo_learns_the_rejection_stages_own_preferences(tmp_path, tiny_ref):
    """``pairs_from``: DPO on an earlier rejection stage's samples, best vs worst by its reward; the
    held-out pairs (by content hash) are that stage's prompts too, and the policy learns their order."""
    import math

    from herd.core.errors import HerdError
    from herd.stages.dpo import run_dpo

    folder = _rejection_artifact(tmp_path / "04-rejection-x")
    cfg = DPOStage(data=[], pairs_from="rejection", eval_size=12, global_batch=6, micro_batch=3, lr=1e-3,
                   precision="fp32", max_len=128, epochs=3, shared_prompt=True)
    path, summary = run_dpo(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / "dpo", name="toy", progress=False,
                            earlier={"rejection": folder})
    assert summary["train_pairs"] == 36 and summary["heldout"]["pairs"] == 12
    assert summary["pairs_from"]["train_pairs"] == 36 and summary["pairs_from"]["chosen_open"] > 0
    assert abs(summary["first_loss"] - math.log(2)) < 1e-6
    assert summary["heldout"]["reward_accuracy"] > 0.8, summary["heldout"]
    files = read_lineage(path)["data"]
    assert files[0]["name"] == "rejection samples" and files[0]["records"] == 48
    with pytest.raises(HerdError, match="has not run before it"):
        run_dpo(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / "dpo2", name="toy", progress=False)


def test_dpo_starts_exactly_at_log_2_in_bf16(tmp_path, tiny_ref):
    """The reference is computed over the loop's own micro-batches, so at step 0 policy and reference
    agree bit for bit even in bf16, where a sequence's log-prob depends on its batch-mates' padding (on
    these varied-length pairs the old length-sorted reference put the step-0 loss 4.8e-6 off log 2 at
    one pair per forward; on SmolLM2 0.7023)."""
    import math

    from herd.stages.dpo import run_dpo

    rng = random.Random(0)
    recs = [{"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))),
             "chosen": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 120))),
             "rejected": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 120)))} for _ in range(24)]
    data = tmp_path / "varied.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    for micro, shared in ((1, True), (3, True), (3, False)):  # each pair's prompt once, or pairs padded together
        cfg = dpo_config(data, eval_size=4, precision="bf16", micro_batch=micro, global_batch=6, max_steps=1,
                         max_len=512, shared_prompt=shared)
        _, summary = run_dpo(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / f"dpo{micro}{shared}", name="toy",
                             progress=False)
        assert abs(summary["first_loss"] - math.log(2)) < 2e-7, (micro, shared, summary["first_loss"])


@pytest.mark.parametrize("checkpoint", [False, True])
def test_a_dpo_pair_off_one_prompt_pass_gets_the_whole_pairs_logps_and_gradients(tiny_ref, checkpoint):
    """DPO's policy scores a pair's two replies off one pass of their prompt: each sequence's log-prob of
    its reply and every parameter's gradient are those of the sequences run whole (layers checkpointed
    too); the shared part stops before the first trained token's prediction."""
    from herd.base import load_model, load_tokenizer
    from herd.engine.logprobs import encode_reply, pad_right, prompt_logps, sequence_logps

    tok, template = load_tokenizer(tiny_ref), get_template(TEMPLATE)
    torch.manual_seed(0)
    model = load_model(tiny_ref).float().train()
    prompt = [{"role": "user", "content": "Which cloud is green, quick or slow, and why would a banana care?"}]
    pairs = [encode_reply(template, tok, prompt, r) for r in ("stone cloud green quick table", "apple river")]
    first = min(s.labels.index(next(x for x in s.labels if x != -100)) for s in pairs)
    assert first > 16  # the prompt is long enough to run once

    def logps_and_grads(shared: bool):
        model.zero_grad()
        if shared:
            lp = prompt_logps(model, pairs, tok.pad_token_id, checkpoint=checkpoint)
        else:
            ids, att, lab = pad_right(pairs, tok.pad_token_id)
            lp = sequence_logps(model, ids, att, lab)
        (lp * torch.tensor([1.0, -0.5])).sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, g_whole = logps_and_grads(False)
    shared, g_shared = logps_and_grads(True)
    assert shared.tolist() == pytest.approx(whole.tolist(), abs=1e-4) and float(whole[0] - whole[1]) != 0
    assert g_shared.keys() == g_whole.keys() and len(g_whole) > 10
    assert float(g_whole["model.embed_tokens.weight"][pairs[0].input_ids[:first - 1]].abs().sum()) > 0
    for n in g_whole:
        scale = float(g_whole[n].abs().max())
        assert float((g_shared[n] - g_whole[n]).abs().max()) <= 1e-4 * max(scale, 1e-3), n


def test_dpo_lora_merges_adapter(tmp_path, toy_data, tiny_ref):
    from herd.stages.dpo import run_dpo

    cfg = dpo_config(toy_data, method="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0}, max_steps=3)
    path, summary = run_dpo(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / "dpo", name="toy", progress=False)
    assert (path / "adapter" / "adapter_config.json").is_file() and summary["steps"] == 3
    base, tuned = load_file(str(tiny_ref.path / "model.safetensors")), load_file(str(path / "model.safetensors"))
    assert tuned.keys() == base.keys()
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"], tuned["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.slow
def test_dpo_kill_and_resume_is_identical(tmp_path, toy_data, tiny_ref):
    from herd.stages.dpo import run_dpo

    _kill_resume_identical("dpo", dpo_config(toy_data, checkpoint_every=2, max_train_pairs=64), tmp_path,
                           tiny_ref, run_dpo)


def test_rejection_sampling_keeps_best_and_trains(tmp_path, toy_data, tiny_ref, reward_artifact):
    from transformers import AutoModelForCausalLM

    from herd.stages.rejection_sampling import run_rejection_sampling
    from herd.stages.reward_model import load_reward_model

    rm_path, _ = reward_artifact
    cfg = RejectionSamplingStage(
        data=[{"name": "toy", "path": str(toy_data), "format": "preference", "max_records": 20}], eval_size=4,
        reward_model=rm_path.name.split("-")[1], k=4, max_new_tokens=8, gen_batch=4,
        truncated="open",  # 8 tokens of a random model: nearly every reply is cut; train them open
        score_precision="fp32",  # the stored rewards are checked against an fp32 rescoring
        sft={"epochs": 1, "global_batch": 8, "lr": 1e-3, "max_len": 128, "precision": "fp32"})
    path, summary = run_rejection_sampling(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / "rs", name="toy",
                                           progress=False, workspace=rm_path.parent)  # RM found by stage name
    rows = [json.loads(x) for x in (path / "rejection_samples.jsonl").read_text().splitlines()]
    assert len(rows) == summary["prompts"] == 16 and all(len(r["replies"]) == 4 for r in rows)
    for r in rows:
        assert r["kept"] == max(range(4), key=lambda j: (r["rewards"][j], -j))
    rm = load_reward_model(rm_path)
    rescored = rm.score([rows[0]["prompt"]] * 4, rows[0]["replies"])
    assert rescored.tolist() == pytest.approx(rows[0]["rewards"], abs=1e-4)
    curve = summary["max_of_k"]
    assert len(curve) == 4 and all(a <= b + 1e-9 for a, b in zip(curve, curve[1:]))
    assert curve[0] == pytest.approx(summary["reward_sampled"]["mean"], abs=1e-4)
    assert curve[-1] == pytest.approx(summary["reward_kept"]["mean"], abs=1e-4)
    assert summary["heldout_greedy_reward"]["n"] == 4 and summary["sft"]["steps"] == 2
    assert summary["samples_truncated"] == sum(not f for r in rows for f in r["finished"]) > 0
    assert summary["kept_truncated"] == sum(not r["finished"][r["kept"]] for r in rows) > 0
    lineage = read_lineage(path)
    assert lineage["stage"]["kind"] == "rejection_sampling" and lineage["metrics"]["k"] == 4
    assert lineage["stage"]["arithmetic"] == "fp32"  # its SFT's, where the stage has no precision of its own
    assert lineage["stage"]["sampling_arithmetic"] in ("fp32", "bf16")
    assert lineage["stage"]["scoring_arithmetic"] == summary["scored_in"] == "fp32"
    AutoModelForCausalLM.from_pretrained(str(path))
    assert not list(tmp_path.glob("rs.*"))  # work folders cleaned up


def test_rejection_selection_feeds_sft(monkeypatch, tmp_path, toy_data, tiny_ref, reward_artifact):
    """The SFT engine receives exactly prompt + highest-scored WHOLE reply for each prompt: a reply cut at
    the token cap is never kept, and a prompt whose replies were all cut gives no record."""
    import herd.stages.rejection_sampling as rej
    import herd.stages.sft as sft

    rm_path, _ = reward_artifact
    seen = {}
    whole = [True, False, True]  # the second reply hit max_new_tokens

    def fake_sample(model, tokenizer, template, prompts, cfg, cache, progress=True):
        return ([["plain words", "more words banana", "banana"] for _ in prompts],
                [[False] * 3] + [whole for _ in prompts[1:]])

    def fake_run_sft(cfg, parent, template, examples, out, **kw):
        seen["examples"] = examples
        raise RuntimeError("stop after selection")

    monkeypatch.setattr(rej, "sample_replies", fake_sample)
    monkeypatch.setattr(sft, "run_sft", fake_run_sft)
    cfg = RejectionSamplingStage(data=[{"name": "toy", "path": str(toy_data), "format": "preference",
                                        "max_records": 6}], eval_size=0, reward_model=str(rm_path), k=3,
                                 score_precision="fp32")  # the rewards are checked against an fp32 rescoring
    with pytest.raises(RuntimeError, match="stop after selection"):
        rej.run_rejection_sampling(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / "rs", name="toy",
                                   progress=False)
    rm = rej.load_reward_model(rm_path)
    assert len(seen["examples"]) == 5  # 6 prompts, the first one's replies all cut
    cut_was_best = 0
    for ex in seen["examples"]:
        prompt, kept = ex.messages[:-1], ex.messages[-1]["content"]
        scores = rm.score([prompt] * 3, ["plain words", "more words banana", "banana"])
        cut_was_best += int(scores.argmax()) == 1
        scores[1] = float("-inf")
        assert kept == ["plain words", "more words banana", "banana"][int(scores.argmax())]
        assert ex.meta["reward"] == pytest.approx(float(scores.max()), abs=1e-5)
    assert cut_was_best  # the rule was exercised: the cut reply would have won
    assert not any(ex.messages[-1].get("open") for ex in seen["examples"])

    # truncated: open keeps the best reply, cut or not, and marks a cut one open (no end of turn trained)
    seen.clear()
    cfg = cfg.model_copy(update={"truncated": "open"})
    with pytest.raises(RuntimeError, match="stop after selection"):
        rej.run_rejection_sampling(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / "rs-open", name="toy",
                                   progress=False)
    assert len(seen["examples"]) == 6
    for i, ex in enumerate(seen["examples"]):
        scores = rm.score([ex.messages[:-1]] * 3, ["plain words", "more words banana", "banana"])
        best = int(scores.argmax())
        assert ex.messages[-1]["content"] == ["plain words", "more words banana", "banana"][best]
        assert bool(ex.messages[-1].get("open")) == (i == 0 or best == 1)  # the first prompt's are all cut


def test_scorer_combines_helpfulness_and_safety(tmp_path):
    """Two reward models: Llama 2's piecewise Rc on σ(raw scores); one model: its raw score."""
    from types import SimpleNamespace

    from herd.core.errors import ConfigError
    from herd.stages.rejection_sampling import Scorer, resolve_reward_model

    helpful = SimpleNamespace(score=lambda p, r, b, desc=None: torch.tensor([2.0, 2.0, 2.0]))
    safety = SimpleNamespace(score=lambda p, r, b, desc=None: torch.tensor([0.0, -3.0, 1.0]))  # σ: 0.5, 0.047, 0.73
    prompts, replies = [[{"role": "user", "content": "x"}]] * 3, ["a", "b", "c"]
    got = Scorer(helpful, safety)(prompts, replies, [False, False, True])
    s = torch.sigmoid(torch.tensor([0.0, -3.0, 1.0]))
    assert got.tolist() == pytest.approx([float(torch.sigmoid(torch.tensor(2.0))), float(s[1]), float(s[2])])
    assert Scorer(helpful)(prompts, replies, [False] * 3).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ConfigError, match="reward model 'rm' not found"):
        resolve_reward_model("rm", tmp_path, None)


def test_sampling_batches_by_length_and_resumes_from_the_cache(monkeypatch, tmp_path, tokenizer, toy_data):
    """Prompts decode in batches of similar length, longest first, each prompt's samples from its own
    streams (seed, i * K + j); finished prompts are read back, a batch cut by a kill is sampled again,
    nothing twice; a cache of the earlier per-chunk format reads back as it was used."""
    import herd.engine.generation as gen
    from herd.stages.rejection_sampling import sample_replies

    calls = []

    def fake_completions(model, tok, texts, **kw):
        assert kw["seed"] == 5 and kw["batch_size"] == len(texts)
        calls.append(kw["stream_ids"])
        return [gen.Completion(f"reply {s}", "length" if s % 3 == 0 else "stop") for s in kw["stream_ids"]]

    monkeypatch.setattr(gen, "completions", fake_completions)
    cfg = RejectionSamplingStage(data=[{"name": "t", "path": str(toy_data), "format": "preference"}],
                                 reward_model="rm", k=2, gen_batch=2, seed=5)
    # prompt i is i + 1 words long: the batches are [4, 3], [2, 1], [0]
    prompts = [{"messages": [{"role": "user", "content": " ".join(["word"] * (i + 1))}], "safety": False}
               for i in range(5)]
    cache = tmp_path / "samples.jsonl"

    def sample():
        return sample_replies(None, tokenizer, get_template(TEMPLATE), prompts, cfg, cache, progress=False)

    first = sample()
    assert calls == [[8, 9, 6, 7], [4, 5, 2, 3], [0, 1]]
    assert first[0] == [[f"reply {2 * i}", f"reply {2 * i + 1}"] for i in range(5)]  # in input order
    assert first[1][:2] == [[False, True], [True, False]]  # which replies were cut, kept per prompt
    lines = cache.read_text().splitlines()
    cache.write_text(lines[0] + "\n" + lines[1][:10])  # killed while writing the second batch
    calls.clear()
    assert sample() == first and calls == [[4, 5, 2, 3], [0, 1]]
    calls.clear()
    assert sample() == first and calls == [] and len(cache.read_text().splitlines()) == 5  # one line a prompt
    # the earlier format: chunk c held prompts 2c, 2c + 1 (input order), and no finish reasons (all finished)
    cache.write_text("".join(json.dumps({"chunk": c, "replies": first[0][2 * c:2 * c + 2]}) + "\n" for c in range(3)))
    assert sample() == (first[0], [[True, True]] * 5) and calls == []
    # a cache holding some prompts of a batch: only the others are sampled
    cache.write_text(json.dumps({"prompts": [3], "replies": [first[0][3]], "finished": [first[1][3]]}) + "\n")
    assert sample() == first and calls == [[8, 9], [4, 5, 2, 3], [0, 1]]


def test_rejection_scores_its_samples_in_score_precision_and_held_out_in_fp32(monkeypatch, tmp_path, toy_data,
                                                                            tiny_ref, reward_artifact):
    """The kept reply is chosen under ``score_precision``'s autocast; the held-out greedy rewards, which
    compare parent and derived, are always fp32."""
    import herd.stages.rejection_sampling as rej
    import herd.stages.sft as sft
    from herd.stages.sampling import Scorer

    rm_path, _ = reward_artifact
    calls, real_call = [], Scorer.__call__

    def spy(self, prompts, replies, is_safety, desc=None):
        on = torch.is_autocast_enabled("cpu")
        calls.append((len(replies), on and torch.get_autocast_dtype("cpu")))
        return real_call(self, prompts, replies, is_safety, desc)

    def fake_run_sft(cfg, parent, template, examples, out, **kw):
        raise RuntimeError("stop after selection")

    monkeypatch.setattr(Scorer, "__call__", spy)
    monkeypatch.setattr(rej, "sample_replies", lambda m, t, tpl, prompts, cfg, cache, progress=True: (
        [["plain words", "more words banana", "banana"] for _ in prompts], [[True] * 3 for _ in prompts]))
    monkeypatch.setattr(sft, "run_sft", fake_run_sft)
    cfg = RejectionSamplingStage(data=[{"name": "toy", "path": str(toy_data), "format": "preference",
                                        "max_records": 6}], eval_size=2, reward_model=str(rm_path), k=3,
                                 max_new_tokens=4, score_precision="bf16")
    with pytest.raises(RuntimeError, match="stop after selection"):
        rej.run_rejection_sampling(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / "rs", name="toy",
                                   progress=False)
    assert calls == [(4 * 3, torch.bfloat16), (2, False)]  # 4 training prompts x K, then the 2 held out


def test_rejection_chooses_its_temperature_on_dev_by_the_best_of_k_reward(monkeypatch, tmp_path, toy_data,
                                                                           tiny_ref, reward_artifact):
    """``temperatures``: each candidate samples the held-out prompts K times; the one whose mean best reward
    (Llama 2's Figure 21 criterion) is highest samples the training prompts, whichever order it is listed in."""
    import herd.stages.rejection_sampling as rej
    import herd.stages.sft as sft

    rm_path, _ = reward_artifact
    rm = rej.load_reward_model(rm_path)
    by_t = {0.5: ["plain words", "plain words", "words"], 1.5: ["banana", "more words banana", "plain words"]}
    calls = []

    def fake_sample(model, tokenizer, template, prompts, cfg, cache, progress=True):
        calls.append((cache.name, cfg.temperature, [p["messages"] for p in prompts]))
        return [by_t[cfg.temperature] for _ in prompts], [[True] * 3 for _ in prompts]

    def fake_run_sft(cfg, parent, template, examples, out, **kw):
        raise RuntimeError("stop after selection")

    monkeypatch.setattr(rej, "sample_replies", fake_sample)
    monkeypatch.setattr(sft, "run_sft", fake_run_sft)
    for order in ([0.5, 1.5], [1.5, 0.5]):
        calls.clear()
        cfg = RejectionSamplingStage(data=[{"name": "toy", "path": str(toy_data), "format": "preference",
                                            "max_records": 6}], eval_size=2, reward_model=str(rm_path), k=3,
                                     max_new_tokens=4, temperatures=order, score_precision="fp32")
        with pytest.raises(RuntimeError, match="stop after selection"):
            rej.run_rejection_sampling(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / f"rs{order[0]}",
                                       name="toy", progress=False)
        dev = calls[0][2]
        best = {t: float(torch.stack([rm.score([p] * 3, by_t[t]) for p in dev]).max(dim=1).values.mean())
                for t in by_t}
        assert abs(best[0.5] - best[1.5]) > 1e-3  # the choice is not a tie
        want = max(best, key=best.get)
        assert [(c[0], c[1], len(c[2])) for c in calls] == [
            (f"dev-T{order[0]:g}.jsonl", order[0], 2), (f"dev-T{order[1]:g}.jsonl", order[1], 2),
            ("samples.jsonl", want, 4)]  # the dev prompts at each candidate, then the training prompts
        assert calls[1][2] == dev and not any(p in dev for p in calls[2][2])


def test_rejection_temperature_candidates_are_validated_and_hash_neutral(toy_data):
    from herd.core.recipe import hash_dump

    base = {"data": [{"name": "t", "path": str(toy_data), "format": "preference"}], "reward_model": "rm"}
    with pytest.raises(ValidationError, match="must be > 0"):
        RejectionSamplingStage(**base, temperatures=[0.7, 0])
    with pytest.raises(ValidationError, match="eval_size > 0"):
        RejectionSamplingStage(**base, temperatures=[0.7, 1.0], eval_size=0)
    assert "temperatures" not in hash_dump(RejectionSamplingStage(**base))  # earlier runs keep their folders
    assert hash_dump(RejectionSamplingStage(**base, temperatures=[0.7]))["temperatures"] == [0.7]


def test_rejection_samples_do_not_depend_on_the_batch_size(tmp_path, tokenizer, toy_data, tiny_model):
    """The real engine: the same samples whatever ``gen_batch`` groups the prompts into."""
    from herd.stages.rejection_sampling import sample_replies

    prompts = [{"messages": [{"role": "user", "content": " ".join(["why"] * (1 + 3 * i % 7))}], "safety": False}
               for i in range(5)]
    got = []
    for g in (1, 2, 5):
        cfg = RejectionSamplingStage(data=[{"name": "t", "path": str(toy_data), "format": "preference"}],
                                     reward_model="rm", k=3, gen_batch=g, seed=7, max_new_tokens=6)
        got.append(sample_replies(tiny_model, tokenizer, get_template(TEMPLATE), prompts, cfg,
                                  tmp_path / f"s{g}.jsonl", progress=False))
    assert got[0] == got[1] == got[2]
    assert all(len(set(r)) > 1 for r in got[0][0])  # the K samples of a prompt differ


@pytest.mark.parametrize("kind", ["reward_model", "dpo"])
def test_pair_gradient_checkpointing_trains_the_same_weights(tmp_path, toy_data, tiny_ref, kind):
    """Recomputing the layers' activations (memory only) must not change what a pair stage learns."""
    from herd.stages.dpo import run_dpo
    from herd.stages.reward_model import run_reward_model

    run, make = {"reward_model": (run_reward_model, rm_config), "dpo": (run_dpo, dpo_config)}[kind]
    weights, losses = [], []
    for gc in (False, True):
        cfg = make(toy_data, max_steps=2, micro_batch=2, gradient_checkpointing=gc)
        path, summary = run(cfg, tiny_ref, get_template(TEMPLATE), tmp_path / f"{kind}-{gc}", name="toy",
                            progress=False)
        weights.append(load_file(str(path / "model.safetensors")))
        losses.append((summary["first_loss"], summary["final_loss"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    assert weights[0].keys() == weights[1].keys()
    base = load_file(str(tiny_ref.path / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(weights[0][name], base[name])  # the stage trained the layers at all
    for k in weights[0]:
        torch.testing.assert_close(weights[1][k], weights[0][k], rtol=1e-4, atol=1e-6, msg=k)
