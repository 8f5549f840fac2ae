"""MT-bench answer generation and pairwise judging (dossier §2.5; FastChat llm_judge), on the tiny base.

The tiny base's verdicts are noise, so the protocol is tested on what it guarantees: the answer format,
category temperatures, the history of turn 2, the verbatim judge prompts in both orders, the parsing
of [[A]]/[[B]]/[[C]], FastChat's aggregation (inconsistent orders → tie, errors left out) and the
bootstrap interval; and an OpenAI-compatible endpoint (herd serve on loopback) judges exactly as the
same model does in-process.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

import pytest

from herd.cli import main
from herd.core.errors import DataError, HerdError
from herd.evals import judge as J
from herd.evals.mtbench import (
    DEFAULT_TEMPERATURE,
    TEMPERATURE,
    generate_answers,
    read_answers,
    read_questions,
    write_answers,
)
from herd.templates import get_template

QUESTIONS = [  # FastChat question.jsonl records (MT-bench style: 2 turns; Vicuna-bench style: 1)
    {"question_id": 81, "category": "writing",
     "turns": ["Compose a short travel blog post about a trip to Hawaii.",
               "Rewrite your previous response. Start every sentence with the letter A."]},
    {"question_id": 111, "category": "math",
     "turns": ["What is 7 times 8?", "Now divide that by 4."]},
    {"question_id": 5, "category": "generic", "turns": ["How can I improve my time management skills?"]},
]


@pytest.fixture()
def question_file(tmp_path):
    p = tmp_path / "question.jsonl"
    p.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return p


def test_question_file_errors_name_the_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps(QUESTIONS[0]) + "\n" + json.dumps({"question_id": 2, "category": "math", "turns": []}) + "\n")
    with pytest.raises(DataError, match=r"q\.jsonl:2.*turns"):
        read_questions(p)
    p.write_text(json.dumps(QUESTIONS[0]) + "\n" + json.dumps(QUESTIONS[0]) + "\n")
    with pytest.raises(DataError, match="duplicate question_id 81"):
        read_questions(p)


def test_answers_follow_the_mtbench_protocol(question_file, tiny_model, tokenizer):
    t = get_template("vicuna_v1.1")
    qs = read_questions(question_file)
    ans = generate_answers(tiny_model, tokenizer, t, qs, model_id="tiny", max_new_tokens=6)
    assert [a["question_id"] for a in ans] == [5, 81, 111]  # sorted like FastChat's reorg_answer_file
    by_id = {a["question_id"]: a for a in ans}
    assert [len(by_id[q]["choices"][0]["turns"]) for q in (81, 111, 5)] == [2, 2, 1]
    assert by_id[81]["generate_params"]["temperature"] == TEMPERATURE["writing"] == 0.7
    assert by_id[111]["generate_params"]["temperature"] == TEMPERATURE["math"] == 0.0
    assert by_id[5]["generate_params"]["temperature"] == DEFAULT_TEMPERATURE  # not an MT-bench category
    # turn 2 is asked with turn 1 and the model's own first answer in the history, in the template
    a1, _ = by_id[111]["choices"][0]["turns"]
    history = [{"role": "user", "content": QUESTIONS[1]["turns"][0]}, {"role": "assistant", "content": a1},
               {"role": "user", "content": QUESTIONS[1]["turns"][1]}]
    assert by_id[111]["generate_params"]["prompt"] == t.prompt(history, tokenizer)
    assert by_id[111]["generate_params"]["prompt"].endswith(f"{a1}{tokenizer.eos_token}USER: Now divide that by 4. "
                                                            "ASSISTANT:")
    # greedy categories are reproducible; the answer file round-trips in FastChat's format
    again = generate_answers(tiny_model, tokenizer, t, qs[1:2], model_id="tiny", max_new_tokens=6)
    assert again[0]["choices"] == by_id[111]["choices"]
    assert read_answers(write_answers(question_file.parent / "a.jsonl", ans))[81]["choices"][0]["turns"] == \
        by_id[81]["choices"][0]["turns"]


def test_mtbench_answers_cli_writes_fastchats_answer_format(question_file, tmp_path, capsys):
    out = tmp_path / "answers" / "tiny.jsonl"
    assert main(["eval", "mtbench-answers", "tiny", "--questions", str(question_file), "--out", str(out),
                 "--max-new-tokens", "4"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [5, 81, 111] and {r["model_id"] for r in rows} == {"tiny"}
    assert all({"question_id", "answer_id", "model_id", "choices", "tstamp"} <= set(r) for r in rows)
    assert [len(r["choices"][0]["turns"]) for r in rows] == [1, 2, 2]
    assert rows[1]["generate_params"]["max_new_token"] == 4 and rows[1]["generate_params"]["template"] == "tokenizer"


def test_verdict_parsing_follows_fastchat():
    assert J.parse_verdict("Assistant A is more detailed. [[A]]") == "A"
    assert J.parse_verdict("Final verdict: [[B]]") == "B"
    assert J.parse_verdict("Both are equally good. [[C]]") == "tie"
    assert J.parse_verdict("[[B]] ... on reflection [[A]]") == "A"  # FastChat checks [[A]] first
    assert J.parse_verdict("A is better") == "error" and J.parse_verdict("[A]") == "error"


def test_both_orders_combine_like_show_result():
    assert J.combine("model_1", "model_1") == "model_1"
    assert J.combine("model_2", "model_2") == "model_2"
    assert J.combine("model_1", "model_2") == "tie"  # inconsistent across orders
    assert J.combine("tie", "tie") == "tie" and J.combine("tie", "model_1") == "tie"
    assert J.combine("error", "model_1") == "error" and J.combine("model_2", "error") == "error"


def _results(outcomes):
    g = {"model_1": ("model_1", "model_1"), "model_2": ("model_2", "model_2"), "tie": ("tie", "tie"),
         "inconsistent": ("model_1", "model_2"), "error": ("error", "model_1")}
    return [{"model_1": "x", "model_2": "y", "judge": ["j", "pair-v2"], "g1_winner": g[o][0],
             "g2_winner": g[o][1], "winner": J.combine(*g[o])} for o in outcomes]


def test_summary_counts_rates_and_bootstrap_interval():
    s = J.summarize(_results(["model_1"] * 6 + ["model_2"] * 2 + ["tie"] + ["inconsistent"] + ["error"] * 2))
    assert (s["games"], s["errors"], s["win"], s["tie"], s["loss"], s["inconsistent"]) == (10, 2, 6, 2, 2, 1)
    assert s["win_rate"] == 0.6 and s["loss_rate"] == 0.2 and s["win_rate_adjusted"] == 0.7
    lo, hi = s["ci"]["win_rate_adjusted"]
    assert 0 <= lo < 0.7 < hi <= 1
    assert J.summarize(_results(["model_1"] * 6 + ["model_2"] * 2 + ["tie"] * 2))["ci"] == \
        J.summarize(_results(["model_1"] * 6 + ["model_2"] * 2 + ["tie"] * 2))["ci"]  # seeded
    big = J.summarize(_results((["model_1"] * 6 + ["model_2"] * 2 + ["tie"] * 2) * 20))
    assert big["win_rate_adjusted"] == 0.7
    assert big["ci"]["win_rate_adjusted"][1] - big["ci"]["win_rate_adjusted"][0] < hi - lo  # more games, tighter
    assert J.summarize(_results(["error"]))["games"] == 0 and J.summarize(_results(["error"]))["ci"]["win_rate"] is None


def test_judge_prompts_are_fastchats_verbatim():
    # sha256 of the strings in FastChat fastchat/llm_judge/data/judge_prompts.jsonl ("pair-v2", "pair-v2-multi-turn")
    digest = {name: hashlib.sha256(getattr(J, name).encode()).hexdigest()[:16]
              for name in ("PAIR_V2_SYSTEM", "PAIR_V2_TEMPLATE", "PAIR_V2_MULTI_SYSTEM", "PAIR_V2_MULTI_TEMPLATE")}
    assert digest == EXPECTED_PROMPT_SHA
    system, user = J.pair_prompt(["Q1?"], ["first"], ["second"], 1)
    assert system == J.PAIR_V2_SYSTEM and user == ("[User Question]\nQ1?\n\n[The Start of Assistant A's Answer]\nfirst\n"
                                                   "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's "
                                                   "Answer]\nsecond\n[The End of Assistant B's Answer]")


# computed from the JSON lines of FastChat's judge_prompts.jsonl (commit 0e6e7fdc), not from herd's copy
EXPECTED_PROMPT_SHA = {"PAIR_V2_SYSTEM": "3af0a1db4f105579", "PAIR_V2_TEMPLATE": "22f93e573bf9343e",
                       "PAIR_V2_MULTI_SYSTEM": "78cf7f037cf5cc78", "PAIR_V2_MULTI_TEMPLATE": "a962ad885e77f79a"}


def _answers(tmp_path, name, texts):
    recs = [{"question_id": q["question_id"], "model_id": name, "category": q["category"],
             "question_turns": q["turns"], "choices": [{"index": 0, "turns": texts[i][:len(q["turns"])]}]}
            for i, q in enumerate(QUESTIONS)]
    return write_answers(tmp_path / f"{name}.jsonl", recs)


def test_games_cover_both_turns_in_both_orders(tmp_path):
    a = read_answers(_answers(tmp_path, "alpha", [["A1", "A2"], ["A3", "A4"], ["A5"]]))
    b = read_answers(_answers(tmp_path, "beta", [["B1", "B2"], ["B3", "B4"], ["B5"]]))
    gs = J.games(a, b)
    assert [(g.question_id, g.turn) for g in gs] == [(5, 1), (81, 1), (81, 2), (111, 1), (111, 2)]
    g = next(g for g in gs if g.question_id == 81 and g.turn == 2)
    (s1, u1), (s2, u2) = g.prompts
    assert s1 == s2 == J.PAIR_V2_MULTI_SYSTEM
    assert "### Assistant A:\nA1\n\n" in u1 and "### Assistant A:\nA2\n\n" in u1 and "### Assistant B:\nB2\n\n" in u1
    assert "### Assistant A:\nB2\n\n" in u2 and "### Assistant B:\nA2\n\n" in u2  # swapped order
    del b[5]
    with pytest.raises(HerdError, match="different questions"):
        J.games(a, b)


def test_in_process_judge_cli_on_the_tiny_base(tmp_path, capsys):
    a = _answers(tmp_path, "alpha", [["Aloha from Hawaii.", "A sunny trip."], ["56", "14"], ["Plan ahead."]])
    b = _answers(tmp_path, "beta", [["Hawaii was fun.", "All good."], ["54", "13.5"], ["Sleep more."]])
    out = tmp_path / "judgments.jsonl"
    assert main(["eval", "judge", str(a), str(b), "--judge", "tiny", "--max-new-tokens", "8", "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and {r["turn"] for r in rows} == {1, 2}
    for r in rows:
        assert r["model_1"] == "alpha" and r["model_2"] == "beta" and r["judge"][0] == "tiny"
        assert r["g1_user_prompt"].index("Assistant A") < r["g1_user_prompt"].index("Assistant B")
        assert r["winner"] == J.combine(r["g1_winner"], r["g2_winner"])
        for g, j in (("g1_winner", "g1_judgment"), ("g2_winner", "g2_judgment")):
            assert r[g] in ("model_1", "model_2", "tie", "error") and isinstance(r[j], str)
    q111 = next(r for r in rows if r["question_id"] == 111 and r["turn"] == 1)
    assert "Assistant A's Answer]\n56\n" in q111["g1_user_prompt"] and "Assistant A's Answer]\n54\n" in q111["g2_user_prompt"]
    assert summary["games"] + summary["errors"] == 5 and summary["model_1"] == "alpha"
    assert summary["win"] + summary["tie"] + summary["loss"] == summary["games"]


class _Server:
    """herd serve (uvicorn) in a thread on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/v1"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def test_endpoint_judge_matches_the_same_model_in_process(tmp_path):
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from herd.artifacts import new_lineage, save_model_folder, template_record, write_lineage
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.serve import create_app, load_served

    ref = resolve_base("tiny")
    folder = tmp_path / "tiny-judge"
    # vicuna_v1.1: after "ASSISTANT:" the random tiny model says something visible (after ChatML's
    # "assistant\n" it says only newlines), so the comparison has text to compare
    tok, t = load_tokenizer(ref), get_template("vicuna_v1.1")
    save_model_folder(load_model(ref), tok, t, folder)
    write_lineage(folder, new_lineage("tiny-judge", parent=ref.describe(), template=template_record(t, tok)))
    served = load_served(folder, "transformers", context_length=4096, max_batch=4)
    server = _Server(create_app([served]))
    try:
        prompts = [J.pair_prompt(["What is 7 times 8?"], ["56"], ["54"], 1),
                   J.pair_prompt(["What is 7 times 8?"], ["54"], ["56"], 1)]
        remote = J.make_judge(server.url, max_new_tokens=8)  # model name: the first the endpoint lists
        local = J.make_judge(str(folder), max_new_tokens=8)
        local.batch_size = 1
        assert remote.name == "tiny-judge"
        got, want = remote.complete(prompts), local.complete(prompts)
        assert [x.strip() for x in got] == [x.strip() for x in want] and any(x.strip() for x in want)
    finally:
        server.stop()
        served.backend.close()


def test_heldout_loss_by_category_marks_one_table_per_eval(tmp_path):
    """Per-category rows carry their category and one group, so a scorecard reader (herd ui) draws them
    as one table; each is the held-out loss of that category's records, parent vs derived."""
    import herd.plugins  # noqa: F401  (registers the evals)
    from herd.base import load_tokenizer, resolve_base
    from herd.core.recipe import load_recipe
    from herd.core.registry import EVALS
    from herd.data.records import Example
    from herd.evals.registry import EvalContext
    from herd.templates import get_template

    tiny = resolve_base("tiny").path
    exs = [Example([{"role": "user", "content": f"Name a {c} thing, {i}."},
                    {"role": "assistant", "content": f"A {c} thing number {i}."}], "t", i, {"category": c})
           for i, c in enumerate(["open_qa", "brainstorming", "open_qa", "classification"])]
    ctx = EvalContext(recipe=load_recipe("dolly", "tiny"), template=get_template("dolly"),
                      tokenizer=load_tokenizer(tiny), eval_examples=exs, parent_path=tiny, derived_path=tiny,
                      out_dir=tmp_path, progress=False)
    cfg_cls, fn = EVALS["heldout_loss_by_category"]
    rows = fn(ctx, cfg_cls()).metrics
    assert [m["category"] for m in rows] == ["brainstorming", "classification", "open_qa"]
    assert {m["group"] for m in rows} == {"held-out response loss per category"}
    assert all(m["parent"] == m["derived"] for m in rows)  # the same model on both sides


def test_heldout_loss_by_category_reuses_the_whole_splits_losses(tmp_path, monkeypatch):
    """After the ``heldout_loss`` eval, the per-category eval scores nothing again, and each category's
    per-record losses are those of scoring that category alone, in the same order (so its paired CI is too)."""
    import pytest

    import herd.engine.heldout as heldout
    import herd.plugins  # noqa: F401  (registers the evals)
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.core.recipe import eval_max_len, load_recipe
    from herd.core.registry import EVALS
    from herd.data.records import Example
    from herd.data.tokenize import tokenize_examples
    from herd.evals.registry import EvalContext
    from herd.templates import get_template

    tiny = resolve_base("tiny").path
    cats = ["open_qa", "brainstorming", "classification"]
    exs = [Example([{"role": "user", "content": f"Name a {cats[i % 3]} thing, {i}." + " More words." * (i % 5)},
                    {"role": "assistant", "content": f"A {cats[i % 3]} thing number {i}." + " Yes." * i}],
                   "t", i, {"category": cats[i % 3]}) for i in range(20)]
    recipe, template, tok = load_recipe("dolly", "tiny"), get_template("dolly"), load_tokenizer(tiny)
    ctx = EvalContext(recipe=recipe, template=template, tokenizer=tok, eval_examples=exs, parent_path=tiny,
                      derived_path=tiny, out_dir=tmp_path, progress=False)
    calls = []
    real = heldout.heldout_loss
    monkeypatch.setattr(heldout, "heldout_loss", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    whole = EVALS["heldout_loss"][1](ctx, EVALS["heldout_loss"][0]()).metrics
    rows = EVALS["heldout_loss_by_category"][1](ctx, EVALS["heldout_loss_by_category"][0]()).metrics
    assert calls == [20, 20]  # parent and derived, once each: the per-category eval reused them
    assert whole[0]["n"] == 20 and sum(m["n"] for m in rows) == 20
    model, max_len = load_model(tiny), eval_max_len(recipe)
    for m in rows:
        items, _ = tokenize_examples([e for e in exs if e.meta["category"] == m["category"]], template, tok, max_len)
        alone = real(model, items, tok.pad_token_id, row_len=max_len)
        assert m["parent"] == pytest.approx(round(alone["loss"], 4), abs=1e-4)
        assert m["n"] == len(items)
    # the same per-record order as scoring alone: the group's rows, rebuilt, pair up record by record
    ctx2 = EvalContext(recipe=recipe, template=template, tokenizer=tok, eval_examples=exs, parent_path=tiny,
                       derived_path=tiny, out_dir=tmp_path, progress=False)
    items, _ = tokenize_examples(exs, template, tok, max_len)
    res = ctx2.heldout_loss("parent", items, max_len)
    by_item = dict(zip(res["order"], res["per_record"]))
    idx = [i for i, it in enumerate(items) if exs[it.index].meta["category"] == "open_qa"]
    alone = real(model, [items[i] for i in idx], tok.pad_token_id, row_len=max_len)
    regrouped = [by_item[idx[j]] for j in heldout.packing_order([items[i] for i in idx], max_len)]
    assert [c for _, c in regrouped] == [c for _, c in alone["per_record"]]
    assert [s for s, _ in regrouped] == pytest.approx([s for s, _ in alone["per_record"]], rel=1e-5)
