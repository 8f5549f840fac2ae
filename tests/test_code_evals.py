"""HumanEval / infilling / MBPP scoring pieces, and the registered evals end to end on the tiny model.

The tiny random Llama scores 0 everywhere: the end-to-end tests check wiring, structure and counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from herd.core.paired import MIN_ITEMS
from herd.engine import sandbox as sb
from herd.evals import humaneval as he

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HUMANEVAL = SHARED / "humaneval" / "HumanEval.jsonl.gz"
INFILLING = SHARED / "humaneval_infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"
MBPP = SHARED / "mbpp" / "mbpp.jsonl"
needs_data = pytest.mark.skipif(not (HUMANEVAL.is_file() and INFILLING.is_file() and MBPP.is_file()),
                                reason="shared code-eval data not present")


# ---- pass@k ----------------------------------------------------------------------------------------------

def test_pass_at_k_matches_a_hand_computation():
    # n=5 samples, c=2 correct: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@3 = 1 - 1/10
    assert he.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert he.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert he.pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert he.pass_at_k(5, 2, 4) == 1.0  # n - c < k: every 4-subset holds a correct sample
    assert he.pass_at_k(10, 0, 5) == 0.0
    assert he.pass_at_k(10, 10, 1) == 1.0
    for n in (1, 7, 20, 200):
        for c in range(0, n + 1, max(1, n // 7)):
            for k in (1, 2, 10, 100):
                if k <= n:
                    exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                    assert he.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert he.estimate_pass_at_k([5, 5], [2, 0], 2) == pytest.approx([0.7, 0.0])


# ---- text handling ---------------------------------------------------------------------------------------

def test_truncation_keeps_indentation_and_cuts_at_the_first_stop():
    text = "    x = 1\n    return x\n\ndef other():\n    pass\n"
    assert he.truncate(text, he.STOP_SEQUENCES) == "    x = 1\n    return x\n"
    assert he.truncate("    return 1\n# done\nprint(2)", he.STOP_SEQUENCES) == "    return 1"
    assert he.truncate("    return 1", he.STOP_SEQUENCES) == "    return 1"
    assert he.truncate("x = 1\n[DONE]\nmore", he.MBPP_STOP) == "x = 1\n"
    assert set(he.STOP_SEQUENCES) == {"\ndef", "\nclass", "\nif", "\nprint", "\n#"}


def test_infilling_exact_match_compares_stripped_lines():
    canonical = "        for idx2, elem2 in enumerate(numbers):\n"
    assert he.exact_match("        for idx2, elem2 in enumerate(numbers):\n", canonical)
    assert he.exact_match("for idx2, elem2 in enumerate(numbers):", canonical)  # indentation, newline
    assert he.exact_match("\n  for idx2, elem2 in enumerate(numbers):   \n\n", canonical)  # blank lines
    assert not he.exact_match("        for idx2,elem2 in enumerate(numbers):\n", canonical)  # inner spaces
    assert not he.exact_match("        for idx2, elem2 in enumerate(nums):\n", canonical)
    assert not he.exact_match("", canonical)
    two = "    a = 1\n    b = 2\n"
    assert he.exact_match("a = 1\nb = 2", two) and not he.exact_match("b = 2\na = 1", two)
    assert not he.exact_match("    a = 1\n", two)


def test_single_line_infilling_keeps_one_line_with_its_newline():
    assert he.first_line("    return x\n    more\n") == "    return x\n"
    assert he.first_line("    return x") == "    return x\n"  # stopped by <EOT>/EOS before the newline
    assert he.first_line("\n    return x\n") == "\n"


def test_decoding_a_continuation_keeps_its_leading_spaces(tokenizer):
    ids = tokenizer("    return x\n", add_special_tokens=False)["input_ids"]
    assert he.decode_continuation(tokenizer, ids) == "    return x\n"
    assert he.decode_continuation(tokenizer, []) == ""


def test_decoding_a_continuation_survives_a_sentencepiece_decoder():
    """Llama 2's decoder strips one leading space from a whole decode: a completion's indent loses a space."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁", "▁▁▁", "▁return", "▁x", "\n", "▁\n"]
    tk = Tokenizer(models.Unigram([(p, -1.0) for p in pieces], unk_id=0))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    ids = [pieces.index(p) for p in ("▁▁▁", "▁return", "▁x", "\n")]
    assert tok.decode(ids) == "   return x\n"  # the naive decode: three spaces, an IndentationError
    assert he.decode_continuation(tok, ids) == "    return x\n"


# ---- programs -----------------------------------------------------------------------------------------

@needs_data
def test_check_program_is_human_evals():
    p = he.load_humaneval(HUMANEVAL)[0]
    prog = he.check_program(p, p["canonical_solution"])
    assert prog == p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + "check(has_close_elements)"


@needs_data
def test_canonical_infilling_middles_pass_and_broken_ones_fail():
    tasks = he.load_infilling(INFILLING)[:40:2]
    assert all(he.exact_match(t["canonical_solution"], t["canonical_solution"]) for t in tasks)
    good = sb.run_programs([he.infilling_program(t, t["canonical_solution"]) for t in tasks])
    assert all(r.passed for r in good), [r for r in good if not r.passed]
    broken = []
    for t in tasks:
        line = t["canonical_solution"]
        broken.append(he.infilling_program(t, line[: len(line) - len(line.lstrip())] + "return (\n"))
    assert not any(r.passed for r in sb.run_programs(broken))


@needs_data
def test_mbpp_prompt_and_programs():
    rows = he.load_mbpp(MBPP)
    by_id = {r["task_id"]: r for r in rows}
    test = he.mbpp_split(rows)
    assert len(rows) == 974 and len(test) == 500 and test[0]["task_id"] == 11
    prompt = he.mbpp_prompt(test[0], [by_id[i] for i in he.MBPP_SHOTS])
    assert prompt.startswith("You are an expert Python programmer, and here is your task: Write a function to "
                             "find the similar elements from the given two tuple lists. Your code should pass "
                             "these tests:\n\nassert similar_elements(")
    assert prompt.count("[BEGIN]\n") == 4 and prompt.count("\n[DONE]\n") == 3 and "\r" not in prompt
    assert prompt.endswith("assert remove_Occ(\"PHP\",\"P\") == \"H\"\n[BEGIN]\n")
    # reference solutions pass (367 needs its setup code after the candidate); a wrong one fails
    sel = [by_id[i] for i in (11, 12, 367, 500)]
    res = sb.run_programs([he.mbpp_program(p, p["code"]) for p in sel] + [he.mbpp_program(sel[0], "pass")])
    assert [r.passed for r in res] == [True, True, True, True, False], res


# ---- the registered evals ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def derived_dir(tiny_ref, tmp_path_factory):
    """The tiny model with Code Llama's FIM sentinels added, saved like a derived artifact."""
    from herd.base import load_model, load_tokenizer
    from herd.data.transforms.fim import add_sentinels

    out = tmp_path_factory.mktemp("derived")
    tok, model = load_tokenizer(tiny_ref), load_model(tiny_ref)
    add_sentinels(tok, model)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _ctx(tiny_ref, derived_dir, out_dir):
    from herd.base import load_tokenizer
    from herd.evals.registry import EvalContext

    # like the scorecard: ctx.tokenizer is the derived one, which the parent must not be fed
    return EvalContext(recipe=None, template=None, tokenizer=load_tokenizer(derived_dir), eval_examples=[],
                       parent_path=tiny_ref.path, derived_path=derived_dir, out_dir=out_dir, progress=False)


def _eval(name):
    from herd.core.registry import EVALS

    return EVALS[name]


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _check_metrics(metrics, names):
    assert [m["name"] for m in metrics] == names
    for m in metrics:
        assert m.keys() >= {"task", "name", "dataset", "parent", "derived", "better", "delta", "ci95", "n", "verdict"}
        assert m["delta"] == pytest.approx(m["derived"] - m["parent"], abs=0.02)  # paired over the same tasks
        if m["n"] < MIN_ITEMS:  # these end-to-end runs score a few tasks: no interval is claimed on so few
            assert m["ci95"] is None and m["verdict"] == "too few items"
        else:
            assert m["ci95"][0] <= m["delta"] <= m["ci95"][1]
        if m["name"].startswith("middle_nll"):  # nats/token
            assert m["better"] == "lower" and m["parent"] > 0 and m["derived"] > 0
        else:
            assert m["better"] == "higher" and 0.0 <= m["parent"] <= 100.0 and 0.0 <= m["derived"] <= 100.0


def test_configs_validate():
    cfg_cls, _ = _eval("humaneval")
    assert cfg_cls().k == [1, 10] and cfg_cls().n_samples >= 10 and cfg_cls().timeout == 3.0
    with pytest.raises(ValidationError):
        cfg_cls(k=[1, 10], n_samples=5)
    with pytest.raises(ValidationError):
        cfg_cls(workers=4)
    with pytest.raises(ValidationError):
        cfg_cls(n_problem=3)  # a typo is an error, not a silent default
    assert "not found" in cfg_cls(data="/nonexistent/HumanEval.jsonl.gz").unavailable(Path.cwd())
    inf_cls, _ = _eval("humaneval_infilling")
    assert inf_cls().modes == ["psm", "spm"] and inf_cls().token_healing == ["psm", "spm"]
    assert inf_cls(token_healing=False).token_healing == [] and inf_cls(token_healing=["spm"]).token_healing == ["spm"]
    with pytest.raises(ValidationError):
        inf_cls(modes=["pms"])
    mbpp_cls, _ = _eval("mbpp")
    assert mbpp_cls().k == [1] and mbpp_cls().shots == [2, 3, 4]


@needs_data
def test_humaneval_eval_end_to_end(tiny_ref, derived_dir, tmp_path):
    cfg_cls, fn = _eval("humaneval")
    cfg = cfg_cls(data=str(HUMANEVAL), n_problems=2, k=[1, 2], n_samples=2, max_new_tokens=8, batch_size=4)
    out = fn(_ctx(tiny_ref, derived_dir, tmp_path), cfg)
    _check_metrics(out.metrics, ["pass@1", "pass@2"])
    assert "2 problems" in out.metrics[0]["dataset"] and "greedy" in out.metrics[0]["task"]
    assert [Path(f).name for f in out.files] == ["humaneval-parent.jsonl", "humaneval-derived.jsonl"]
    for role, f in zip(("parent", "derived"), out.files):
        rows = _rows(f)
        assert len(rows) == 2 + 2 * 2  # greedy + n_samples per problem
        assert [r["kind"] for r in rows].count("greedy") == 2 and {r["role"] for r in rows} == {role}
        assert {r["task_id"] for r in rows} == {"HumanEval/0", "HumanEval/1"}
        assert all(r["status"] in sb.STATUSES and isinstance(r["completion"], str) for r in rows)
        assert all(r["status"] != "error" for r in rows)  # the sandbox itself ran every program
    st = out.extra["humaneval"]["statuses"]
    assert sum(st["parent"].values()) == sum(st["derived"].values()) == 6
    assert "HumanEval" in out.markdown and "Sandbox:" in out.markdown


@needs_data
def test_infilling_dev_and_test_splits_share_no_problem():
    tasks = he.load_infilling(INFILLING)
    dev, test = he.infilling_split(tasks, "dev"), he.infilling_split(tasks, "test")
    probs = {name: {he.task_problem(t["task_id"]) for t in part} for name, part in (("dev", dev), ("test", test))}
    assert len(probs["dev"]) == 40 and len(probs["test"]) == 124 and not probs["dev"] & probs["test"]
    assert len(dev) + len(test) == len(tasks) == 1033 and len(test) >= 200
    assert [t["task_id"] for t in he.infilling_split(tasks, "test")] == [t["task_id"] for t in test]  # seeded
    assert he.infilling_split(tasks, "all") == tasks
    assert he.task_problem("SingleLineInfilling/HumanEval/12/L3") == "HumanEval/12"


@needs_data
def test_infilling_eval_end_to_end_uses_each_roles_tokenizer(tiny_ref, derived_dir, tmp_path):
    cfg_cls, fn = _eval("humaneval_infilling")
    cfg = cfg_cls(data=str(INFILLING), n_problems=3, max_new_tokens=6, batch_size=4)
    out = fn(_ctx(tiny_ref, derived_dir, tmp_path), cfg)
    _check_metrics(out.metrics, ["middle_nll_psm", "middle_nll_psm_unhealed", "middle_nll_spm",
                                 "middle_nll_spm_unhealed", "exact_match_psm", "pass@1_psm", "exact_match_spm",
                                 "pass@1_spm"])
    assert all("token-healed" in m["task"] for m in out.metrics if not m["name"].endswith("_unhealed"))
    assert out.extra["humaneval_infilling"]["single_line"] is True
    nll = next(m for m in out.metrics if m["name"] == "middle_nll_spm")
    assert nll["better"] == "lower" and nll["parent"] > 0 and nll["derived"] > 0
    for f in out.files:
        rows = _rows(f)
        assert len(rows) == 3 * 2 and [r["mode"] for r in rows] == ["psm"] * 3 + ["spm"] * 3
        assert all(r["middle"].endswith("\n") and r["middle"].count("\n") == 1 for r in rows)  # one line
        assert all(isinstance(r["exact_match"], bool) and r["status"] in sb.STATUSES for r in rows)
        assert all(r["status"] != "error" for r in rows)


@needs_data
def test_mbpp_eval_end_to_end(tiny_ref, derived_dir, tmp_path):
    cfg_cls, fn = _eval("mbpp")
    cfg = cfg_cls(data=str(MBPP), n_problems=2, max_new_tokens=8, batch_size=2)
    out = fn(_ctx(tiny_ref, derived_dir, tmp_path), cfg)
    _check_metrics(out.metrics, ["pass@1"])
    assert "3-shot" in out.metrics[0]["task"] and "task_ids 11-510 (2 problems" in out.metrics[0]["dataset"]
    assert [len(_rows(f)) for f in out.files] == [2, 2]


def test_middle_nll_scores_exactly_the_middle_tokens(tiny_model, tokenizer):
    """The NLL averages -log softmax over exactly the middle's tokens, the first predicted from the prompt's
    last position (no off-by-one), in both layouts, with the sentinels as text for a tokenizer without them."""
    import torch

    from herd.data.transforms.fim import infill_prompt_ids

    prob = {"prompt": "def f(x):\n", "suffix": "\n    return y\n", "canonical_solution": "    y"}
    target = tokenizer(prob["canonical_solution"], add_special_tokens=False)["input_ids"]
    assert len(target) >= 2
    for mode in ("psm", "spm"):
        got = he.middle_nll(tiny_model, tokenizer, [prob], mode)[0]
        prompt = infill_prompt_ids(tokenizer, prob["prompt"], prob["suffix"], mode)
        with torch.no_grad():
            logp = tiny_model(input_ids=torch.tensor([prompt + target])).logits[0].log_softmax(-1)
        want = -sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(target)) / len(target)
        assert got == pytest.approx(float(want), abs=1e-5)


def test_spm_token_healing_scores_the_training_layout(tiny_model, tokenizer):
    """A single-line task's SPM prompt ends with a newline that SmolLM2's BPE merges with the next line's
    indentation. Healed, prompt + scored tokens are exactly SPM training's joint encoding of prefix +
    middle, and the NLL is taken over the tokens after the healed prompt."""
    import torch

    from herd.data.transforms.fim import infill_prompt_ids

    prob = {"prompt": "def f(x):\n", "suffix": "\n    return y\n", "canonical_solution": "    y = x + 1\n"}
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    pre, joint = enc(prob["prompt"]), enc(prob["prompt"] + prob["canonical_solution"])
    assert joint[:len(pre)] != pre  # the merge this is about: "\n" + "    " is one token
    paper = infill_prompt_ids(tokenizer, prob["prompt"], prob["suffix"], "spm")
    healed, dropped = he.healed_prompt(tokenizer, prob["prompt"], prob["suffix"], "spm")
    assert dropped == "\n" and healed == paper[:-1]
    target = joint[len(pre) - 1:]
    assert healed + target == paper[:-len(pre)] + joint  # the training sequence's tokens, <EOT> aside
    got = he.middle_nll(tiny_model, tokenizer, [prob], "spm", heal=True)[0]
    with torch.no_grad():
        logp = tiny_model(input_ids=torch.tensor([healed + target])).logits[0].log_softmax(-1)
    want = -sum(logp[len(healed) - 1 + i, t] for i, t in enumerate(target)) / len(target)
    assert got == pytest.approx(float(want), abs=1e-5)


def test_psm_token_healing_drops_the_prefix_newline_and_scores_it_with_the_middle(tiny_model, tokenizer):
    """PSM's prefix sits before <SUF>: healed, the prompt is the paper's without the prefix's last token
    (the lone newline), and the scored tokens are the dropped text + middle encoded on their own, as PSM
    training encodes a middle: the newline then merges with the indentation, as in code written out."""
    import torch

    from herd.data.transforms.fim import SENTINELS, infill_prompt_ids

    prob = {"prompt": "def f(x):\n", "suffix": "    return y\n", "canonical_solution": "    y = x + 1\n"}
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    pre, suf = enc(prob["prompt"]), enc(prob["suffix"])
    paper = infill_prompt_ids(tokenizer, prob["prompt"], prob["suffix"], "psm")
    healed, dropped = he.healed_prompt(tokenizer, prob["prompt"], prob["suffix"], "psm")
    tail = enc(SENTINELS[1]) + suf + enc(SENTINELS[2])  # <SUF> suffix <MID>: the parent reads them as text
    assert paper[-len(tail) - 1:] == pre[-1:] + tail
    assert dropped == "\n" and healed == paper[:-len(tail) - 1] + tail  # only the prefix's last token goes
    target = enc(dropped + prob["canonical_solution"])
    assert target[0] != enc("\n")[0] and tokenizer.decode(target[:1]).startswith("\n ")  # newline + indent
    got = he.middle_nll(tiny_model, tokenizer, [prob], "psm", heal=True)[0]
    with torch.no_grad():
        logp = tiny_model(input_ids=torch.tensor([healed + target])).logits[0].log_softmax(-1)
    want = -sum(logp[len(healed) - 1 + i, t] for i, t in enumerate(target)) / len(target)
    assert got == pytest.approx(float(want), abs=1e-5)
    assert got != pytest.approx(he.middle_nll(tiny_model, tokenizer, [prob], "psm")[0], abs=1e-5)


@pytest.mark.parametrize("mode", ["spm", "psm"])
def test_healed_generation_rewrites_the_dropped_text_first(tiny_model, tokenizer, mode):
    """The first generated token is the most likely among those whose text starts with the dropped
    text, and the middle is what follows that text: the engine's one-prefill healing gives what
    prefilling the prompt again with that token and decoding on gives (greedy, fp32)."""
    import torch

    probs = [{"prompt": "def f(x):\n", "suffix": "\n    return y\n", "canonical_solution": "    y = x\n"},
             {"prompt": "def g(a, b):\n    s = a + b\n", "suffix": "    return s\n", "canonical_solution": "    s *= 2\n"},
             {"prompt": "x = [1, 2,", "suffix": "]\nprint(x)\n", "canonical_solution": " 3"}]
    vocab = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
    want = []
    for prob in probs:  # the reference: two passes, the healed token appended to the prompt by hand
        healed, dropped = he.healed_prompt(tokenizer, prob["prompt"], prob["suffix"], mode)
        assert dropped
        allowed = [t for t, v in enumerate(vocab) if v.startswith(dropped)]
        assert he.healing_tokens(tokenizer, [dropped, ""]) == [allowed, None]
        with torch.no_grad():
            logits = tiny_model(input_ids=torch.tensor([healed])).logits[0, -1]
        first = max(allowed, key=lambda t: float(logits[t]))
        (ids,) = he.generate_ids(tiny_model, tokenizer, [healed + [first]], max_new_tokens=6, stop_strings=["\n"])[0]
        want.append(he.first_line(vocab[first][len(dropped):] + he.decode_continuation(tokenizer, ids)))
    got = he.infill(tiny_model, tokenizer, probs, mode, single_line=True, max_new_tokens=6, heal=True,
                    batch_size=2)
    assert got == want
    assert all(m.endswith("\n") and m.count("\n") == 1 for m in got)
