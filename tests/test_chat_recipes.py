"""The chat recipes (Vicuna, Llama-2-Chat with GAtt, Dolly) end to end on the tiny base, their data
transforms, and multi-turn `herd chat` in each artifact's own template."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from herd.cli import main
from herd.core.errors import ConfigError
from herd.core.paths import repo_root
from herd.data.records import Example
from tests.chat_helpers import memorized_artifact
from tests.conftest import ALPACA_TINY

QUESTIONS = [{"question_id": 1, "category": "writing", "turns": ["Write a haiku about rain.", "Now one about sun."]},
             {"question_id": 2, "category": "math", "turns": ["What is 2 + 3?"]}]


SMALL_EVAL = {"max_train_records": 16, "eval_size": 8, "dev_size": 2, "evals": {"side_by_side": {"n": 2, "max_new_tokens": 8},
                                                                   "mtbench_pairwise": {"enabled": False}}}


def _recipe(tmp_path, name: str, **top) -> str:
    raw = yaml.safe_load((repo_root() / "recipes" / f"{name}.yaml").read_text())
    raw.update(top)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(p)


# -- transforms in the recipe schema ---------------------------------------------------------------------

def test_transforms_are_validated_when_the_recipe_loads(tmp_path):
    from herd.core.recipe import load_recipe

    with pytest.raises(ConfigError, match=r"transforms\[0\]\.kind: unknown data transform 'nope'"):
        load_recipe(_recipe(tmp_path, "vicuna", transforms=[{"kind": "nope"}]), "full")
    with pytest.raises(ConfigError, match=r"transforms\[1\] \(profile 'full'\): fraction"):
        load_recipe(_recipe(tmp_path, "llama2chat", transforms=[{"kind": "template_roles"},
                                                                {"kind": "gatt", "fraction": 2}]), "full")
    with pytest.raises(ConfigError, match=r"profiles\.tiny\.transforms\.gatt: no transform of that kind"):
        load_recipe(_recipe(tmp_path, "vicuna", profiles={"tiny": {"transforms": {"gatt": {"seed": 1}}}}))
    rec = load_recipe("llama2chat", "tiny")  # a profile overrides one transform by its kind
    assert [t["kind"] for t in rec.transforms] == ["template_roles", "gatt"]
    assert rec.transforms[1]["respond"] == "dialogue" and rec.transforms[1]["min_turns"] == 2
    assert "setting transforms.gatt.respond: 'dialogue' (published: 'model')" in rec.deviations
    assert load_recipe("llama2chat", "full").transforms[1]["respond"] == "model"


def _dialogue(i: int, turns: int) -> Example:
    msgs = []
    for k in range(turns):
        msgs += [{"role": "user", "content": f"question {i}.{k}"}, {"role": "assistant", "content": f"answer {i}.{k}"}]
    return Example(messages=msgs, source="d.json", index=i)


def test_gatt_transform_keeps_single_turn_records_and_can_resample_from_a_model():
    from herd.core.recipe import load_recipe
    from herd.data.transforms import GattConfig, TransformConfig, TransformContext, gatt
    from herd.engine.generation import model_responder  # the pipeline's responder (derive passes it)

    exs = [_dialogue(0, 1), _dialogue(1, 2), _dialogue(2, 3), _dialogue(3, 2)]
    ctx = TransformContext(recipe=load_recipe("llama2chat", "tiny"), base_spec="tiny")
    out = gatt(exs, GattConfig(kind="gatt", fraction=0.5, seed=3), ctx)
    assert len(out) == 4 and out[0] is exs[0]  # the single-turn record stays plain SFT data
    converted = [ex for ex in out if "gatt_instruction" in ex.meta]
    assert len(converted) == 2 and ctx.report.count("changed", "gatt") == 2  # half of the 3 dialogues, rounded
    for ex in converted:
        assert ex.messages[0] == {"role": "system", "content": ex.meta["gatt_instruction"]}
        flags = [m.get("train", True) for m in ex.messages if m["role"] == "assistant"]
        assert flags[-1] is True and not any(flags[:-1])  # loss only on the last reply
    ctx = TransformContext(recipe=load_recipe("llama2chat", "tiny"), base_spec="tiny", responder=model_responder)
    cfg = GattConfig(kind="gatt", keep_rest=False, respond="model", respond_max_new_tokens=4, seed=1)
    out = gatt(exs[:2], cfg, ctx)  # the tiny base re-samples every reply, turn by turn
    assert len(out) == 1 and out[0].meta["gatt_resampled"] is True
    assert [m["content"] for m in out[0].messages if m["role"] == "assistant"] != ["answer 1.0", "answer 1.1"]
    assert ctx.report.count("dropped", "gatt", "not converted (keep_rest: false)") == 1
    assert isinstance(cfg, TransformConfig)


# -- the three recipes end to end on the tiny base ---------------------------------------------------------

@pytest.mark.slow
def test_vicuna_end_to_end_with_transform_report_and_mtbench_pairwise(tmp_path):
    from herd.api import derive

    qfile = tmp_path / "question.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    overrides = {"max_train_records": 16, "eval_size": 8, "dev_size": 2, "evals": {"side_by_side": {"n": 2, "max_new_tokens": 8},
                           "mtbench_pairwise": {"enabled": True, "questions": str(qfile), "judge": "tiny",
                                                "max_new_tokens": 6, "judge_max_new_tokens": 6, "bootstrap": 200,
                                                "max_turns": None}}}
    res = derive("vicuna", base="tiny", out=tmp_path / "ws", max_steps=2, overrides=overrides, progress=False)
    card = json.loads((res.path / "scorecard.json").read_text())
    lin = json.loads((res.path / "lineage.json").read_text())
    assert lin["template"]["name"] == "vicuna_v1.1" and lin["metrics"]["steps"] == 2
    entries = {(e["step"], e["action"], e["reason"]): e["count"] for e in card["extra"]["data_transforms"]["entries"]}
    assert entries[("template_roles", "dropped", "role(s) tool not in template vicuna_v1.1")] == 153
    assert any(s == "split" and a == "changed" for s, a, _ in entries)  # long chats split to 1,024 tokens
    assert card["extra"]["data_transforms"]["sizes"]["transform vicuna_clean"]["in"] == 446
    assert lin["data_transforms"]["report"] == card["extra"]["data_transforms"]
    assert [t["kind"] for t in lin["data_transforms"]["transforms"]] == ["template_roles", "vicuna_clean"]
    md = (res.path / "scorecard.md").read_text()
    assert "## Data transforms" in md and "## MT-bench pairwise judgment" in md
    row = next(m for m in card["metrics"] if m["name"] == "win_rate_adjusted")
    s = card["extra"]["mtbench_pairwise"]
    assert s["games"] + s["errors"] == 3  # question 1: two turns, question 2: one
    if s["games"]:
        assert row["derived"] + row["parent"] == pytest.approx(1.0)
    answers = [json.loads(x) for x in (res.path / "mtbench-answers-derived.jsonl").read_text().splitlines()]
    assert [len(a["choices"][0]["turns"]) for a in answers] == [2, 1]
    assert (res.path / "mtbench-judgments.jsonl").is_file()
    assert any("tiny: the Korean-language filter is off" in d for d in card["deviations"])


def test_alpaca_answers_the_bench_unjudged_and_records_its_command(tmp_path):
    """``judge: none``: parent and derived answer every question into the artifact, no verdicts are
    invented; the scorecard carries the paired held-out headline and the command that reproduces it."""
    from herd.api import derive

    qfile = tmp_path / "question.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    res = derive("alpaca", base="tiny", out=tmp_path / "ws", max_steps=1, progress=False,
                 overrides={**SMALL_EVAL, "evals": {**SMALL_EVAL["evals"], "mtbench_pairwise": {
                     "questions": str(qfile), "judge": "none", "max_new_tokens": 4}}})
    card = res.scorecard
    assert "mtbench_pairwise" not in card["extra"] and card["extra"]["mtbench_answers"]["questions"] == 2
    assert not any("MT-bench" in m["task"] for m in card["metrics"])
    for role in ("parent", "derived"):
        answers = [json.loads(x) for x in (res.path / f"mtbench-answers-{role}.jsonl").read_text().splitlines()]
        assert [a["model_id"] for a in answers] == [role, role] and len(answers[0]["choices"][0]["turns"]) == 2
    assert "herd eval judge mtbench-answers-derived.jsonl" in (res.path / "scorecard.md").read_text()
    h = card["headline"]
    assert card["extra"]["splits"] == {"held_out": 8, "dev": 2, "test": 6, "scored": "test"}
    assert h["name"] == "held-out response loss" and h["n"] == 6 and h["ci95"][0] <= h["delta"] <= h["ci95"][1]
    assert card["run"]["command"].startswith("herd derive alpaca --profile tiny --base tiny --out ")
    assert " --eval-size 8 --dev-size 2  # with API overrides" in card["run"]["command"]  # flags where there are flags
    assert '"eval_size"' not in card["run"]["command"] and card["run"]["wall_seconds"] > 0
    from herd.core.phases import process_peak_mb
    # the process's high-water mark when the card was written: above a loaded model, at most the mark now
    assert 100 < card["run"]["peak_rss_mb"] <= process_peak_mb() + 1
    assert f"peak RSS {card['run']['peak_rss_mb'] / 1024:.2f} GiB" in (res.path / "scorecard.md").read_text()


@pytest.mark.slow
def test_llama2chat_end_to_end_trains_gatt_records(tmp_path, capsys):
    from herd.api import derive
    from tests.test_align_pipeline import SMALL

    derive("llama2chat", base="tiny", out=tmp_path / "ws", max_steps=2,
           overrides={**SMALL, **SMALL_EVAL, "evals": {**SMALL["evals"], **SMALL_EVAL["evals"]}})
    out = capsys.readouterr().out
    assert "[data] transforms:" in out and "gatt: changed" in out
    model = (tmp_path / "ws" / "model").resolve()
    sft = next((tmp_path / "ws").glob("01-sft-*[!k]"))  # the SFT stage (the final model is the DPO stage)
    card = json.loads((model / "scorecard.json").read_text())
    entries = {(e["step"], e["action"]): e["count"] for e in card["extra"]["data_transforms"]["entries"]}
    assert entries[("gatt", "changed")] == 214  # every tool-free dialogue of 2+ exchanges
    lin = json.loads((sft / "lineage.json").read_text())
    assert lin["template"]["name"] == "llama2_chat" and lin["stage"]["config"]["max_len"] == 2048
    assert {m["task"] for m in card["metrics"]} >= {"held-out response loss"}


def dolly_file(path, n: int = 100):
    """Real records in databricks-dolly-15k's format: Stanford Alpaca's first records, context = input,
    category guessed from the instruction (the real file carries its own)."""
    rules = [(r"^(classify|categor|identify whether|is this|which of)", "classification"),
             (r"^summari[sz]e", "summarization"), (r"^(brainstorm|list|suggest|give me|name|come up)", "brainstorming"),
             (r"^(write|compose|create|generate|invent|describe a)", "creative_writing"),
             (r"^(extract|find|rewrite|edit|convert)", "information_extraction")]
    out = []
    for rec in json.loads(ALPACA_TINY.read_text())[:n]:
        ins = rec["instruction"]
        cat = next((c for pat, c in rules if re.match(pat, ins.lower())), None) or \
            ("closed_qa" if rec["input"].strip() else "open_qa")
        out.append({"instruction": ins, "context": rec["input"], "response": rec["output"], "category": cat})
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


@pytest.mark.slow
def test_dolly_end_to_end_from_a_user_file(tmp_path, capsys):
    data = dolly_file(tmp_path / "dolly.jsonl")
    raw = yaml.safe_load((repo_root() / "recipes" / "dolly.yaml").read_text())
    raw["profiles"]["tiny"]["evals"]["side_by_side"] = SMALL_EVAL["evals"]["side_by_side"]  # fewer, shorter answers
    raw["profiles"]["tiny"]["evals"]["mtbench_pairwise"] = {"enabled": False}  # 80 questions: not the subject here
    recipe = tmp_path / "dolly.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    # the tiny profile holds out 150 records: too many for a 100-record file, said before any model loads
    assert main(["derive", str(recipe), "--base", "tiny", "--data", str(data), "--out", str(tmp_path / "ws")]) == 2
    assert "dolly.yaml (profile 'tiny'): eval_size 150 leaves no training records (have 100); give more records, " \
        "or hold out fewer: --eval-size 20 --dev-size 6" in capsys.readouterr().err
    # the flags hold out fewer without a copy of the recipe; a dev split at least as large is refused first
    assert main(["derive", str(recipe), "--base", "tiny", "--data", str(data), "--eval-size", "30",
                 "--out", str(tmp_path / "ws")]) == 2
    assert "dev_size: 50 leaves no test records (eval_size 30)" in capsys.readouterr().err
    assert main(["derive", str(recipe), "--base", "tiny", "--data", str(data), "--max-steps", "2",
                 "--eval-size", "30", "--dev-size", "10", "--out", str(tmp_path / "ws")]) == 0
    model = (tmp_path / "ws" / "model").resolve()
    card = json.loads((model / "scorecard.json").read_text())
    per_cat = [m for m in card["metrics"] if m["task"].startswith("held-out response loss, category ")]
    assert len(per_cat) >= 3 and all(m["parent"] > 0 and m["derived"] > 0 for m in per_cat)
    lin = json.loads((model / "lineage.json").read_text())
    assert lin["template"]["name"] == "dolly" and lin["data"][0]["name"] == "dolly"
    assert lin["data_transforms"]["report"]["sizes"]["transform stratified_sample"] == {"in": 100, "out": 100}
    samples = card["samples"]
    assert samples and all("### End" not in s["derived"] for s in samples)  # cut at the template's stop
    assert "data: the recipe's files replaced on the command line by dolly.jsonl" in card["deviations"]
    assert {"setting eval_size: 30 (published: 200)", "setting dev_size: 10 (published: 0)"} <= set(card["deviations"])
    assert card["extra"]["splits"] == {"held_out": 30, "dev": 10, "test": 20, "scored": "test"}
    assert "--eval-size 30 --dev-size 10" in card["run"]["command"]


def test_dolly_without_its_file_says_where_to_put_it(tmp_path, capsys):
    if (repo_root() / "recipes" / "databricks-dolly-15k.jsonl").exists():
        pytest.skip("a real databricks-dolly-15k.jsonl sits next to the recipe")
    assert main(["derive", "dolly", "--base", "tiny", "--out", str(tmp_path / "ws")]) == 2
    assert "databricks-dolly-15k.jsonl not found" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()  # failed before any model loaded


# -- multi-turn herd chat in the artifact's template ------------------------------------------------------------

def test_dolly_chat_reply_is_cut_at_end_and_history_stays_in_the_template(tmp_path):
    from herd.api import ChatSession
    from herd.engine.generation import generate

    art = memorized_artifact(tmp_path / "dolly-art", "dolly",
                             [[{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there"}]])
    chat = ChatSession(art, max_new_tokens=16)
    assert chat.template.name == "dolly" and chat.template.stop_strings(chat.tokenizer)[0] == "### End"
    raw = generate(chat.model, chat.tokenizer, [chat.template.prompt([{"role": "user", "content": "Say hi."}],
                                                                     chat.tokenizer)], max_new_tokens=16, stop=[])[0]
    assert raw.startswith("Hi there\n\n### End")  # the model really says "### End" and would go on
    assert chat.say("Say hi.") == "Hi there"  # herd chat stops there
    second = chat.say("Again, please.")
    blurb = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    expected = (f"{blurb}\n\n### Instruction:\nSay hi.\n\n### Response:\nHi there\n\n### End\n\n"
                f"{blurb}\n\n### Instruction:\nAgain, please.\n\n### Response:\n")
    assert chat.template.prompt(chat.messages[:3], chat.tokenizer) == expected
    assert second == generate(chat.model, chat.tokenizer, [expected], max_new_tokens=16,
                              stop=chat.template.stop_strings(chat.tokenizer))[0]
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("name, expected", [
    ("vicuna_v1.1", "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions. USER: Hello ASSISTANT: {r1}"
                    "<|im_end|>USER: And then? ASSISTANT:"),
    ("llama2_chat", "<|im_start|>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello [/INST] {r1} <|im_end|>"
                    "<|im_start|>[INST] And then? [/INST]"),
])
def test_chat_history_renders_in_the_artifact_template(tmp_path, name, expected):
    from herd.api import ChatSession
    from herd.artifacts import new_lineage, save_model_folder, template_record, write_lineage
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.engine.generation import generate
    from herd.templates import get_template

    ref = resolve_base("tiny")
    tok, t, folder = load_tokenizer(ref), get_template(name), tmp_path / name
    save_model_folder(load_model(ref), tok, t, folder)
    write_lineage(folder, new_lineage(name, parent=ref.describe(), template=template_record(t, tok)))
    chat = ChatSession(folder, system="Be brief." if name == "llama2_chat" else None, max_new_tokens=6)
    r1 = chat.say("Hello")
    r2 = chat.say("And then?")
    prompt = expected.format(r1=r1)
    assert chat.template.prompt(chat.messages[:-1], chat.tokenizer) == prompt
    assert r2 == generate(chat.model, chat.tokenizer, [prompt], max_new_tokens=6,
                          stop=chat.template.stop_strings(chat.tokenizer))[0]


def test_eval_with_a_missing_input_is_announced_before_training_and_listed_as_not_run(tmp_path, capsys):
    """vicuna_bench is not in shared/data: MT-bench pairwise must not fail the run after training."""
    from herd.api import derive

    missing = tmp_path / "no-such-question.jsonl"
    res = derive("vicuna", base="tiny", out=tmp_path / "ws", max_steps=1,
                 overrides={**SMALL_EVAL, "evals": {"heldout_loss": {},
                                                    "mtbench_pairwise": {"enabled": True, "questions": str(missing)}}})
    out = capsys.readouterr().out
    assert out.index("evals.mtbench_pairwise will be skipped") < out.index("[sft]")
    assert res.scorecard["not_run"] == [{"eval": "mtbench_pairwise", "why": f"question file {missing} not found "
                                                                       "(a FastChat question.jsonl)"}]
    assert any(d.startswith("evals.mtbench_pairwise not run") for d in res.scorecard["deviations"])
    assert [m["name"] for m in res.scorecard["metrics"]] == ["loss", "perplexity"]


def test_llama2chat_small_profile_grows_the_stages_the_win_rate_rests_on():
    """The small profile exists for the helpfulness win rate: rejection sampling on ~10x tiny's prompts, most
    of them helpfulness prompts (all 2,312 safety transcripts would swamp them), and the helpfulness reward
    model on every pair within 2,048 tokens, while the stages the win rate does not rest on stay tiny's."""
    from herd.core.recipe import load_recipe
    from herd.stages.sampling import load_prompts, split_prompts

    small, tiny = load_recipe("llama2chat", "small"), load_recipe("llama2chat", "tiny")
    st = {s.name: s for s in small.stages}
    ti = {s.name: s for s in tiny.stages}
    counts = {}
    for label, cfg in (("small", st["rejection"]), ("tiny", ti["rejection"])):
        prompts, _ = load_prompts(cfg.data, relative_to=repo_root() / "recipes")
        train, _ = split_prompts(prompts, cfg)
        counts[label] = (len(train), sum(p["safety"] for p in train))
    assert counts["tiny"] == (32, 0)
    assert counts["small"][0] >= 9 * counts["tiny"][0] and counts["small"][1] <= 32, counts
    assert st["reward_helpful"].max_train_pairs is None and st["reward_helpful"].max_len == 2048
    for name in ("sft", "reward_safety"):
        assert st[name].model_dump() == ti[name].model_dump(), name
    # DPO stands in for PPO on the policy's own samples, ranked by the reward model
    assert (st["dpo"].pairs_from, st["dpo"].data, st["dpo"].shared_prompt) == ("rejection", [], True)
    assert ti["dpo"].pairs_from is None and ti["dpo"].data
    assert any(d.startswith("small: the settings were fixed before") for d in small.deviations)


def test_pairs_from_must_name_an_earlier_rejection_stage(tmp_path):
    """A DPO stage's pairs_from is checked at recipe load, before any model: a later stage, or one that is
    not a rejection_sampling stage, is refused with the stage and profile named."""
    from herd.core.recipe import load_recipe

    pairs = [{"name": "p", "path": "pairs.jsonl", "format": "preference"}]
    base = {"name": "t", "title": "t", "method": "m", "dossier": "d", "paper_base": "b", "template": "chatml",
            "data": [{"name": "sft", "path": "sft.json", "format": "alpaca"}]}
    rs = {"name": "rs", "kind": "rejection_sampling", "data": pairs, "reward_model": "rm"}
    for stages, bad in (([{"name": "dpo", "kind": "dpo", "pairs_from": "rs"}, rs], "not an earlier"),
                        ([{"name": "rm", "kind": "reward_model", "data": pairs},
                          {"name": "dpo", "kind": "dpo", "pairs_from": "rm"}], "not an earlier"),
                        ([rs, {"name": "dpo", "kind": "dpo", "pairs_from": "rs"}], None)):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({**base, "stages": stages}))
        if bad:
            with pytest.raises(ConfigError, match=r"stages\.dpo \(profile 'full'\): pairs_from: '\w+' is not an earlier"):
                load_recipe(str(path), "full")
        else:
            assert load_recipe(str(path), "full").stages[1].pairs_from == "rs"
