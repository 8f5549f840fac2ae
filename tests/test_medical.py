"""Meditron pieces: the demo corpus and its leakage guard, MCQ prompts and scoring, pubmedqa/medqa evals."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from types import SimpleNamespace

import pytest

from herd.core.errors import ConfigError, DataError
from herd.data.documents.pubmedqa import (
    assert_no_leakage,
    demo_sources,
    load_test_labels,
    normalize_text,
    pubmedqa_document,
    pubmedqa_test_texts,
    pubmedqa_train_documents,
    replay_documents,
)
from herd.evals.mcq import (
    MCQItem,
    bootstrap_ci,
    build_prompt,
    continuations,
    encode,
    format_mcq,
    pick_demos,
    score_items,
)

from .conftest import SHARED

PUBMEDQA = SHARED / "pubmedqa"
MEDQA = SHARED / "medqa_usmle_4opt_test" / "phrases_no_exclude_test.jsonl"
REPLAY = SHARED / "llamafactory_pretrain_text_demo"


def _h(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# corpus and leakage


def test_pubmedqa_training_documents_hold_no_test_context():
    docs = list(pubmedqa_train_documents(PUBMEDQA))
    test_ids = load_test_labels(PUBMEDQA)
    records = json.loads((PUBMEDQA / "ori_pqal.json").read_text())
    assert len(docs) == len(records) - len(test_ids) == 500
    # every paragraph of every training document, hashed after normalisation, header lines dropped;
    # boilerplate of a few words ("Case series.", "None.") is shared by train and test abstracts alike
    train_hashes = {_h(re.sub(r"^# .*\n", "", para)) for d in docs for para in d.split("\n\n")}
    test_hashes = {_h(t) for _, t in pubmedqa_test_texts(PUBMEDQA) if len(t.split()) >= 8}
    assert len(test_hashes) > 2000 and not train_hashes & test_hashes
    # and the n-gram guard agrees: nothing of the test split is in there
    rep = assert_no_leakage(docs, pubmedqa_test_texts(PUBMEDQA))
    assert rep["test_ids"] == 500 and rep["train_docs"] == 500 and rep["max_overlap"] == 0.0


def test_leakage_guard_fires_on_an_embedded_test_context_and_names_the_test_id():
    docs = list(pubmedqa_train_documents(PUBMEDQA))
    pmid = next(iter(load_test_labels(PUBMEDQA)))
    context = json.loads((PUBMEDQA / "ori_pqal.json").read_text())[pmid]["CONTEXTS"][0]
    # pasted mid-document, reformatted (upper case, wrapped lines): still found by its 13-gram shingles
    wrapped = re.sub(r"(\S+ \S+ \S+ \S+ \S+ \S+) ", r"\1\n", context.upper())
    docs[7] = docs[7] + "\n\nSee also the following study. " + wrapped + " More text follows here."
    with pytest.raises(DataError, match=f"test item {pmid} leaks into training"):
        assert_no_leakage(docs, pubmedqa_test_texts(PUBMEDQA))
    # an identical short text (below the 13-word shingle size) is caught by its hash
    with pytest.raises(DataError, match="test item x1 leaks into training document 1 .identical"):
        assert_no_leakage(["unrelated text", "Retrospective  cohort study."], {"x1": "retrospective cohort study"})
    # the real failure mode: forgetting to exclude the test split
    with pytest.raises(DataError, match="leaks into training"):
        assert_no_leakage(pubmedqa_train_documents(PUBMEDQA, exclude_test=False), pubmedqa_test_texts(PUBMEDQA))


def test_pubmedqa_document_uses_section_headers_and_ends_with_the_conclusion():
    doc = pubmedqa_document({"CONTEXTS": ["Bg text.", "Methods text."], "LABELS": ["BACKGROUND", "MATERIALS AND METHODS"],
                             "LONG_ANSWER": "It works.", "QUESTION": "Does it work?"})
    assert doc == "# Background\nBg text.\n\n# Materials and methods\nMethods text.\n\n# Conclusions\nIt works."


def test_demo_mixture_of_pubmed_and_replay_holds_the_replay_share(tokenizer):
    from herd.data.transforms.mixture import mix_stream

    assert sum(1 for _ in replay_documents(REPLAY)) == 330
    stream = mix_stream(demo_sources(PUBMEDQA, REPLAY, replay_share=0.05), tokenizer, seed=0)
    tokens = Counter()
    for name, ids in stream:
        tokens[name] += len(ids)
    rep = {s.name: s for s in stream.report.sources}
    assert rep["pubmed"].epochs == 1.0 and rep["pubmed"].docs == 500  # binding: every train abstract once
    assert rep["replay"].epochs < 1.0
    assert abs(tokens["replay"] / sum(tokens.values()) - 0.05) < 0.01


# ---------------------------------------------------------------------------------------------------
# prompts


def _item(i: int, answer: str = "C", question: str = "Which option is correct") -> MCQItem:
    return MCQItem(id=f"q{i}", prompt=format_mcq(question, ["alpha", "beta", "gamma", "delta"]),
                   labels=["A", "B", "C", "D"], answer=answer, texts=["alpha", "beta", "gamma", "delta"])


def test_meditron_prompt_format():
    assert format_mcq("What is 2+2", ["3", "4"]) == "Question: What is 2+2?\n\nOptions:\nA. 3\nB. 4"
    assert format_mcq("Pick one.", ["x"]).startswith("Question: Pick one.\n")
    p = build_prompt("INSTR", _item(0, "B"), [_item(1, "A"), _item(2, "D")])
    q = "Question: Which option is correct?\n\nOptions:\nA. alpha\nB. beta\nC. gamma\nD. delta"
    assert p == f"INSTR\n{q}\nThe answer is: A\n\n{q}\nThe answer is: D\n\n{q}\nThe answer is:"
    assert build_prompt("INSTR", _item(0)) == f"INSTR\n{q}\nThe answer is:"
    assert build_prompt("I", _item(0), [_item(1, "B")], "text") == f"I\n{q}\nThe answer is: B. beta\n\n{q}\nThe answer is:"
    assert continuations(_item(0)) == [" A", " B", " C", " D"]
    assert continuations(_item(0), "text")[1] == " B. beta"


def test_demos_are_deterministic_and_never_the_item_itself():
    pool = [_item(i) for i in range(50)]
    a = pick_demos(pool, 3, seed=1)
    assert a == pick_demos(list(reversed(pool)), 3, seed=1) and len(a) == 3  # independent of pool order
    assert pick_demos(pool, 3, seed=2) != a
    b = pick_demos(pool, 3, seed=1, exclude=a[1].id)
    assert len(b) == 3 and a[1] not in b and a[0] in b and a[2] in b
    assert pick_demos(pool, 0, seed=1) == []


def test_pubmedqa_and_medqa_items_follow_upstream():
    from herd.evals.medical import medqa_items, pubmedqa_items

    parts = pubmedqa_items(PUBMEDQA)
    test, pool = parts["test"], parts["train"] + parts["dev"]
    assert len(test) == 500 and len(pool) == 500 and not {t.id for t in test} & {p.id for p in pool}
    rec = json.loads((PUBMEDQA / "ori_pqal.json").read_text())[test[0].id]
    assert test[0].prompt == "\n".join(rec["CONTEXTS"]) + "\n" + rec["QUESTION"]
    assert Counter(t.answer for t in test) == Counter(load_test_labels(PUBMEDQA).values())
    items = medqa_items(MEDQA)
    assert len(items) == 1273 and items[0].labels == ["A", "B", "C", "D"]
    assert items[0].answer == "B" and items[0].prompt.startswith("Question: A junior orthopaedic")


def test_medqa_reader_names_the_bad_line(tmp_path):
    from herd.evals.medical import medqa_items

    bad = tmp_path / "m.jsonl"
    bad.write_text(json.dumps({"question": "q?", "options": {"A": "x", "B": "y"}, "answer_idx": "A", "answer": "x"})
                   + "\n" + json.dumps({"question": "q?", "options": {"A": "x", "B": "y"}, "answer_idx": "E"}) + "\n")
    with pytest.raises(DataError, match=r"m.jsonl:2 field 'answer_idx'.*'E' is not one of \['A', 'B'\]"):
        medqa_items(bad)


def test_encode_splits_continuations_and_truncates_from_the_left(tokenizer):
    enc = encode(tokenizer, "Question: x?\nThe answer is:", [" A", " maybe", " B. beta"], max_len=4096)
    assert enc.conts[0] == tokenizer(" A", add_special_tokens=False)["input_ids"]
    assert len(enc.conts[2]) > 1 and not enc.truncated
    long = "word " * 500 + "\nThe answer is:"
    enc = encode(tokenizer, long, [" A", " B"], max_len=64)
    assert enc.truncated and len(enc.context) == 63
    assert tokenizer.decode(enc.context).endswith("The answer is:")


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    vals = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1] * 5
    ci = bootstrap_ci(vals, n_boot=500, seed=3)
    assert ci == bootstrap_ci(vals, n_boot=500, seed=3)
    assert ci[0] < sum(vals) / len(vals) < ci[1]
    assert bootstrap_ci([], seed=0) is None


# ---------------------------------------------------------------------------------------------------
# scoring


def _mixed_items() -> tuple[list[str], list[list[str]]]:
    """Prompts of very different lengths, with 1-token and multi-token continuations."""
    short = build_prompt("Answer.", _item(0))
    mid = build_prompt("Answer.", _item(1), [_item(2, "A"), _item(3, "B")])
    long = build_prompt("Answer the question. " * 30, _item(4), [_item(k, "D") for k in range(5, 9)])
    prompts = [short, mid, long, short]
    conts = [continuations(_item(0)), continuations(_item(1), "text"), continuations(_item(4), "text"),
             [" yes", " no", " maybe"]]
    return prompts, conts


@pytest.mark.parametrize("mode", ["top_token", "loglik"])
def test_the_shared_few_shot_prefix_runs_once_and_scores_the_same(tiny_model, tokenizer, mode, monkeypatch):
    from herd.engine import kv

    demos = [_item(k, "ABCD"[k % 4]) for k in range(5, 8)]
    items = [_item(i, question=f"Patient {i} {'has a long history and ' * i}needs which drug") for i in range(4)]
    prompts = [build_prompt("Answer the medical question.", it, demos) for it in items]
    conts = [continuations(it, "text") for it in items]
    calls = []
    monkeypatch.setattr(kv, "prefix_cache", lambda m, ids, f=kv.prefix_cache: calls.append(len(ids)) or f(m, ids))
    shared = score_items(tiny_model, tokenizer, prompts, conts, mode=mode, batch_size=3)
    assert len(calls) == 1 and calls[0] > 100  # instruction and demos: one pass for all items
    monkeypatch.setattr(kv, "PREFIX_MIN", 10**9)  # the plain path: every row whole
    whole = score_items(tiny_model, tokenizer, prompts, conts, mode=mode, batch_size=3)
    assert len(calls) == 1
    for a, b in zip(shared, whole):
        assert a.pred == b.pred and a.top1_token == b.top1_token
        assert a.scores == pytest.approx(b.scores, abs=1e-4)


@pytest.mark.parametrize("mode", ["top_token", "loglik"])
def test_scores_are_the_same_alone_and_in_a_padded_batch(tiny_model, tokenizer, mode):
    prompts, conts = _mixed_items()
    alone = [score_items(tiny_model, tokenizer, [p], [c], mode=mode, batch_size=1)[0] for p, c in zip(prompts, conts)]
    batched = score_items(tiny_model, tokenizer, prompts, conts, mode=mode, batch_size=4)
    for a, b in zip(alone, batched):
        assert a.pred == b.pred and a.top1_token == b.top1_token
        assert a.scores == pytest.approx(b.scores, abs=1e-4)
    # multi-token continuations really are summed in loglik mode (and differ from the first token alone)
    if mode == "loglik":
        top = score_items(tiny_model, tokenizer, prompts[1:2], conts[1:2], mode="top_token")[0]
        assert all(ll < t for ll, t in zip(batched[1].scores, top.scores))


def test_loglik_matches_a_naive_full_forward(tiny_model, tokenizer):
    """Summed log-probs of multi-token options equal those read off one unbatched full-logits pass."""
    import torch

    prompt = build_prompt("Answer.", _item(0), [_item(1, "B")], "text")
    conts = continuations(_item(0), "text")
    got = score_items(tiny_model, tokenizer, [prompt], [conts], mode="loglik")[0].scores
    n = len(tokenizer(prompt)["input_ids"])
    for c, score in zip(conts, got):
        ids = tokenizer(prompt + c, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(tiny_model(ids).logits[0].float(), -1)
        want = sum(float(lp[n - 1 + k, t]) for k, t in enumerate(ids[0, n:].tolist()))
        assert score == pytest.approx(want, abs=1e-4)


def test_loglik_equals_top_token_for_single_token_labels(tiny_model, tokenizer):
    prompts = [build_prompt("Answer.", _item(i)) for i in range(3)]
    conts = [continuations(_item(i)) for i in range(3)]
    a = score_items(tiny_model, tokenizer, prompts, conts, mode="top_token")
    b = score_items(tiny_model, tokenizer, prompts, conts, mode="loglik")
    assert [x.scores for x in a] == [x.scores for x in b]


def test_top_token_refuses_options_sharing_their_first_token(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="share a first token.*use mode: loglik"):
        score_items(tiny_model, tokenizer, ["The answer is:"], [[" A. alpha", " A. beta"]], mode="top_token")


@pytest.mark.smollm2
def test_smollm2_follows_answers_forced_by_the_prompt():
    """Real SmolLM2: demos that all answer the same option for the same question force that option."""
    from herd.base import load_model, load_tokenizer, resolve_base

    ref = resolve_base("smollm2")
    tok, model = load_tokenizer(ref), load_model(ref)
    mcq = [(_item(0, "C"), [_item(k, "C") for k in (1, 2, 3)]), (_item(4, "A"), [_item(k, "A") for k in (5, 6, 7)])]
    pq = MCQItem(id="p", prompt="Aspirin was given to all patients.\nWas aspirin given?", labels=["yes", "no", "maybe"],
                 answer="maybe")
    pq_demos = [MCQItem(id=f"d{k}", prompt=pq.prompt, labels=pq.labels, answer="maybe") for k in range(3)]
    prompts = [build_prompt("Answer the question.", it, demos) for it, demos in mcq] + \
        [build_prompt("Answer yes, no, or maybe.", pq, pq_demos)]
    conts = [continuations(it) for it, _ in mcq] + [continuations(pq)]
    gold = [2, 0, 2]
    for mode in ("top_token", "loglik"):
        scores = score_items(model, tok, prompts, conts, mode=mode, batch_size=2)
        assert [s.pred for s in scores] == gold, mode
        assert all(s.top1_in_options for s in scores)


# ---------------------------------------------------------------------------------------------------
# registered evals


def _ctx(tiny_ref, tokenizer, tmp_path):
    from herd.evals.registry import EvalContext

    return EvalContext(recipe=SimpleNamespace(name="t", source_file=None), template=None, tokenizer=tokenizer,
                       eval_examples=[], parent_path=tiny_ref.path, derived_path=tiny_ref.path, out_dir=tmp_path,
                       progress=False)


@pytest.mark.parametrize("name, cfg", [("pubmedqa", {"n": 3, "shots": 1, "bootstrap": 50}),
                                       ("medqa", {"n": 3, "shots": 2, "bootstrap": 50, "mode": "loglik",
                                                  "target": "text"})])
def test_registered_evals_score_parent_and_derived(tiny_ref, tokenizer, tmp_path, name, cfg):
    import herd.evals.medical  # noqa: F401  (registers pubmedqa and medqa)
    from herd.evals.registry import EVALS

    config_cls, fn = EVALS[name]
    conf = config_cls(**cfg)
    assert conf.unavailable(tmp_path) is None
    out = fn(_ctx(tiny_ref, tokenizer, tmp_path), conf)
    row = out.metrics[0]
    assert [m["name"] for m in out.metrics] == (["accuracy", "macro_f1"] if name == "pubmedqa" else ["accuracy"])
    assert row["name"] == "accuracy" and row["better"] == "higher" and row["parent"] == row["derived"]
    assert {"task", "name", "dataset", "parent", "derived", "better"} <= set(row)
    # parent and derived are the same weights here: a paired difference of exactly 0; 3 items are too few
    # for any paired test, so no interval and no verdict
    assert row["delta"] == 0.0 and row["ci95"] is None and row["n"] == 3 and row["verdict"] == "too few items"
    ex = out.extra[name]
    assert ex["parent"]["items"] == 3 and ex["delta"] == 0.0 and ex["delta_ci95"] == (0.0, 0.0)
    assert ex["parent"]["ci95"][0] <= ex["parent"]["accuracy"] <= ex["parent"]["ci95"][1]
    assert ex["example_prompt"].endswith("The answer is:") and len(ex["demo_ids"]) == cfg["shots"]
    assert "| parent |" in out.markdown and "95% CI" in out.markdown
    assert len(out.files) == 2
    rows = [json.loads(line) for line in (tmp_path / f"{name}-predictions-derived.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {"id", "gold", "pred", "correct", "scores", "top1_in_options"} <= set(rows[0])


def test_eval_configs_validate_and_report_missing_data(tmp_path):
    from pydantic import ValidationError

    import herd.evals.medical  # noqa: F401  (registers pubmedqa and medqa)
    from herd.evals.registry import EVALS

    pub, med = EVALS["pubmedqa"][0], EVALS["medqa"][0]
    with pytest.raises(ValidationError):
        pub(mode="generate")
    with pytest.raises(ValidationError):
        med(shots=-1)
    with pytest.raises(ValidationError):
        pub(target="text")  # PubMedQA has no option texts
    assert "not found" in pub(data=str(tmp_path / "nope")).unavailable(tmp_path)
    assert "not found" in med(data=str(tmp_path / "nope.jsonl")).unavailable(tmp_path)


def test_eval_turns_an_unscorable_config_into_a_config_error(tiny_ref, tokenizer, tmp_path):
    from herd.evals.medical import MedQAConfig, run_medqa

    data = tmp_path / "m.jsonl"
    data.write_text(json.dumps({"question": "q?", "options": {"A": "x", "A A": "y"}, "answer_idx": "A"}) + "\n")
    with pytest.raises(ConfigError, match="evals.medqa: .*share a first token"):
        run_medqa(_ctx(tiny_ref, tokenizer, tmp_path), MedQAConfig(data=str(data), shots=0))


def test_subsets_are_seeded_samples_not_a_label_sorted_prefix():
    """PubMedQA's ground-truth file lists every "yes" item first: a prefix would reward always-yes."""
    from herd.evals.medical import pubmedqa_items, subset

    test = pubmedqa_items(SHARED / "pubmedqa")["test"]
    assert {it.answer for it in test[:60]} == {"yes"}  # the trap
    sample = subset(test, 60, 1234)
    assert len(sample) == 60 and sample == subset(test, 60, 1234)
    assert {it.answer for it in sample} == {"yes", "no", "maybe"}
    order = [test.index(it) for it in sample]
    assert order == sorted(order) and sample != subset(test, 60, 1)
    assert subset(test, None, 0) == test and subset(test, 10_000, 0) == test


# ---------------------------------------------------------------------------------------------------
# PubMedQA fine-tuning (Table 5): records, splits, macro-F1, the fine-tuned models' prompt


def test_pubmedqa_splits_are_disjoint_and_the_fine_tuning_reader_never_returns_a_test_question():
    from herd.data import load_examples
    from herd.data.documents.pubmedqa import PUBMEDQA_INSTRUCTION, pqal_splits

    parts = pqal_splits(PUBMEDQA, dev_size=100, seed=42)
    assert [len(parts[k]) for k in ("train", "dev", "test")] == [400, 100, 500]
    assert set(parts["test"]) == set(load_test_labels(PUBMEDQA))
    assert not (set(parts["train"]) & set(parts["dev"]) or (set(parts["train"]) | set(parts["dev"])) & set(parts["test"]))
    assert pqal_splits(PUBMEDQA, dev_size=100, seed=7)["dev"] != parts["dev"]  # seeded
    records = json.loads((PUBMEDQA / "ori_pqal.json").read_text())
    train = load_examples(PUBMEDQA / "ori_pqal.json", "pubmedqa", split="train")
    dev = load_examples(PUBMEDQA / "ori_pqal.json", "pubmedqa", split="dev")
    assert [e.meta["pmid"] for e in train] == parts["train"] and [e.meta["pmid"] for e in dev] == parts["dev"]
    ex = train[0]
    r = records[ex.meta["pmid"]]
    assert ex.messages == [{"role": "system", "content": PUBMEDQA_INSTRUCTION},
                           {"role": "user", "content": "\n".join(r["CONTEXTS"]) + "\n" + r["QUESTION"]},
                           {"role": "assistant", "content": r["final_decision"]}]
    with pytest.raises(ConfigError, match="never training data"):
        load_examples(PUBMEDQA / "ori_pqal.json", "pubmedqa", split="test")


def test_pubmedqa_reader_refuses_a_test_abstract_filed_under_a_training_pmid(tmp_path):
    records = json.loads((PUBMEDQA / "ori_pqal.json").read_text())
    test_ids = load_test_labels(PUBMEDQA)
    test_pmid = next(iter(test_ids))
    train_pmid = next(p for p in records if p not in test_ids)
    records[train_pmid] = {**records[train_pmid], "CONTEXTS": records[test_pmid]["CONTEXTS"]}
    (tmp_path / "ori_pqal.json").write_text(json.dumps(records))
    (tmp_path / "test_ground_truth.json").write_text(json.dumps(test_ids))
    from herd.data import load_examples

    with pytest.raises(DataError, match=test_pmid):
        load_examples(tmp_path / "ori_pqal.json", "pubmedqa", split="train", dev_size=1)


def test_fine_tuning_records_train_only_the_label_and_im_end(tokenizer):
    from herd.data import load_examples
    from herd.templates import IGNORE_INDEX, get_template

    ex = load_examples(PUBMEDQA / "ori_pqal.json", "pubmedqa", split="train")[:20]
    for e in ex:
        r = get_template("chatml").render(e.messages, tokenizer)
        trained = tokenizer.decode([t for t, lab in zip(r.input_ids, r.labels) if lab != IGNORE_INDEX])
        assert trained == e.messages[2]["content"] + "<|im_end|>"


def test_macro_f1_and_its_paired_interval():
    from herd.core.paired import macro_f1, macro_f1_stat, paired

    gold, pred = [0, 0, 1, 2, 1, 0], [0, 1, 1, 0, 1, 0]
    # yes: P 2/3 R 2/3 -> 2/3; no: P 2/3 R 1 -> 0.8; maybe: never predicted -> 0 (scikit-learn, labels=[0,1,2])
    assert macro_f1(gold, pred, 3) == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert macro_f1(gold, [0] * 6, 3) == pytest.approx((2 * 0.5 / 1.5) / 3)  # always "yes"
    rows = lambda p: [[g, q] for g, q in zip(gold, p)]  # noqa: E731
    out = paired(rows([0] * 6), rows(gold), better="higher", stat=macro_f1_stat(3), n_boot=200, per_item_diff=False)
    assert out["delta"] == pytest.approx(round(1 - 1 / 3 * 2 / 3, 4), abs=1e-4) and out["n"] == 6
    assert "sign_test_p" not in out and out["ci95"][0] <= out["delta"] <= out["ci95"][1]


def test_pubmedqa_dev_split_in_the_fine_tuning_format_reports_macro_f1_beside_the_majority_baseline(
        tiny_ref, tokenizer, tmp_path):
    import herd.evals.medical  # noqa: F401  (registers pubmedqa)
    from herd.evals.registry import EVALS
    from herd.templates import get_template

    config_cls, fn = EVALS["pubmedqa"]
    with pytest.raises(ValueError, match="shots: 0"):
        config_cls(prompt="chat", shots=3)
    ctx = _ctx(tiny_ref, tokenizer, tmp_path)
    ctx.template = get_template("chatml")
    out = fn(ctx, config_cls(prompt="chat", shots=0, split="dev", n=4, bootstrap=50))
    acc, f1 = out.metrics
    assert "dev split (100 non-test questions" in acc["dataset"] and acc["n"] == f1["n"] == 4
    ex = out.extra["pubmedqa"]
    dev_ids = set(herd.evals.medical.pubmedqa_items(PUBMEDQA)["dev"][i].id for i in range(100))
    preds = [json.loads(x) for x in (tmp_path / "pubmedqa-predictions-parent.jsonl").read_text().splitlines()]
    assert {p["id"] for p in preds} <= dev_ids and ex["demo_ids"] == []
    assert ex["example_prompt"].startswith("<|im_start|>system\nAs an expert doctor")
    assert ex["example_prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    base = ex["majority_baseline"]
    assert base["label"] == "yes" and acc["majority_baseline"] == base["accuracy"]
    assert f1["majority_baseline"] == base["macro_f1"] and f1["delta"] == 0.0
    assert f1["parent"] == ex["parent"]["macro_f1"] and sum(ex["parent"]["predicted"].values()) == 4
    assert 'always "yes"' in out.markdown and "macro-F1" in out.markdown
    # each model's answers shuffled over the items: the chance level of its own answer mix, with a p-value
    for role in ("parent", "derived"):
        sh = ex[role]["shuffled"]
        assert sh["permutations"] == 50 and sh["accuracy"]["observed"] == ex[role]["accuracy"]
        assert sh["macro_f1"]["observed"] == ex[role]["macro_f1"] and 0 < sh["accuracy"]["p"] <= 1
        assert sh["accuracy"]["range95"][0] <= sh["accuracy"]["mean"] <= sh["accuracy"]["range95"][1]
    assert "shuffled over the items" in out.markdown and out.markdown.count("| parent |") == 2
