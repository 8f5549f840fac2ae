"""Gorilla (recipes.md §8): APIBench readers, BM25 retrieval, the retriever-aware prompt, the gorilla
template, AST sub-tree matching (checked against Gorilla's own published output) and the eval."""

from __future__ import annotations

import json
import re

import pytest

from herd.core.errors import DataError
from herd.core.paths import repo_root
from herd.data import load_examples
from herd.data.readers.apibench import read_api_database, read_apibench, read_questions, split_code
from herd.data.readers.apibench_files import HUB_FILES, PUBLISHED_RESPONSES
from herd.data.readers.apibench_prompts import RAT_JOIN, question_text, user_prompt
from herd.data.readers.retriever import BM25Retriever
from herd.evals.apibench import HubData
from herd.evals.ast_match import ApiMatcher, extract_api_call, judge
from herd.templates import IGNORE_INDEX, get_template

from .conftest import SHARED

DATA = SHARED / "gorilla_apibench"
DOSSIER = repo_root().parent / "shared" / "reference" / "recipes.md"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared gorilla_apibench dataset not present")


@pytest.fixture(scope="module")
def th():
    return HubData("torchhub", str(DATA))


# ---- the evaluator against Gorilla's published output ------------------------------------------

def test_published_gorilla_torchhub_responses_score_as_gorillas_released_script(th):
    """Gorilla's own TorchHub 0-shot output (186 answers). The paper reports 59.13 % accuracy and 6.98 %
    hallucination, i.e. 110 and 13 of 186. herd's evaluator gives 141 and 30 (75.81 % / 16.13 %): exactly
    what Gorilla's released ast_eval_th.py prints on the released files (ShishirPatil/gorilla issues #17
    and #56, whose reporters got 0.7580645 / 0.1612903); the maintainers answered that the data was
    cleaned after the paper's measurement, so the paper's numbers cannot be reproduced from the release."""
    sc = th.score_file(DATA / PUBLISHED_RESPONSES)
    assert sc.n == 186
    assert (sc.correct, sc.hallucination, sc.wrong_api, sc.no_api_call) == (141, 30, 15, 0)
    assert sc.accuracy == pytest.approx(0.7580645161290323) and sc.hallucination_rate == pytest.approx(0.16129032258064516)
    paper_correct, paper_halluc = round(0.5913 * 186), round(0.0698 * 186)
    assert (paper_correct, paper_halluc) == (110, 13)  # the paper's counts: more than one item away
    by_id = {v.question_id: v for v in sc.verdicts}
    assert by_id[1].status == "correct"
    # the released cut keeps the answer's opening quote: a single-quoted answer string swallows the call
    assert by_id[7].call.startswith("'model = torch.hub.load(") and by_id[7].status == "hallucination"


def test_reference_answers_are_the_ceiling_of_the_protocol(th):
    ref = th.score_references()
    assert (ref.n, ref.correct, ref.hallucination) == (186, 161, 24)


# ---- AST sub-tree matching, unit cases -----------------------------------------------------------

def _answer(call: str) -> str:
    return f"{{'domain': 'x', 'api_call': \"{call}\", 'api_provider': 'PyTorch', 'explanation': 'e'}}"


def test_right_api_is_correct_in_positional_and_keyword_form(th):
    for call in ("model = torch.hub.load('facebookresearch/pytorchvideo', 'slow_r50', pretrained=True)",
                 "torch.hub.load(repo_or_dir='facebookresearch/pytorchvideo', model='slow_r50')"):
        v = judge(_answer(call), "Video Classification", th.matcher)
        assert v.status == "correct", call
        assert th.api[v.matched]["api_name"] == "slow_r50"


def test_unknown_argument_is_hallucination_but_a_real_api_of_another_domain_is_an_error(th):
    # a model name that no API of the database has: hallucination
    assert judge(_answer("torch.hub.load('facebookresearch/pytorchvideo', 'quick_r18')"),
                 "Video Classification", th.matcher).status == "hallucination"
    # argument values match as substrings (the released rule): 'slow_r5000' contains 'slow_r50'
    assert judge(_answer("torch.hub.load('facebookresearch/pytorchvideo', 'slow_r5000')"),
                 "Video Classification", th.matcher).status == "correct"
    # an existing API (ResNet-50, Classification) asked for video classification: error, not hallucination
    v = judge(_answer("torch.hub.load('pytorch/vision', 'resnet50', pretrained=True)"), "Video Classification", th.matcher)
    assert v.status == "wrong_api" and th.api[v.matched]["domain"] == "Classification"


def test_the_function_name_must_match_not_only_the_arguments(th):
    assert judge(_answer("torch.load('facebookresearch/pytorchvideo', 'slow_r50')"), "Video Classification",
                 th.matcher).status == "hallucination"


def test_torchhub_needs_an_api_call_field_while_other_hubs_score_the_whole_text(th):
    assert judge("torch.hub.load('pytorch/vision', 'resnet50')", "Classification", th.matcher).status == "no_api_call"
    assert extract_api_call("hub.load('u')", "tensorflowhub") == "hub.load('u')"
    # the released cut: from 2 characters after the first ":" to the last ")" before api_provider
    assert extract_api_call("<<<api_call>>>: f('a') x, <<<api_provider>>>: p", "huggingface") == "f('a')"
    assert extract_api_call("'api_call': 'f(a', 'api_provider'", "torchhub") == "'f(a', "  # no ")": last char dropped


def test_tensorflow_and_huggingface_rules():
    tf = read_api_database(DATA / HUB_FILES["tensorflowhub"].api)
    m = ApiMatcher(tf, "tensorflowhub")
    url = re.search(r"'(https://tfhub[^']+)'", tf[2]["api_call"]).group(1)
    assert m.match(f"layer = hub.KerasLayer('{url}', trainable=False)") == 2
    assert m.match("layer = hub.KerasLayer('https://tfhub.dev/google/not-a-model/4')") is None
    hf = read_api_database(DATA / HUB_FILES["huggingface"].api)
    m = ApiMatcher(hf, "huggingface")
    i = next(i for i, e in enumerate(hf) if e["api_call"] == "AutoModel.from_pretrained('princeton-nlp/unsup-simcse-roberta-base')")
    assert m.match("model = AutoModel.from_pretrained('princeton-nlp/unsup-simcse-roberta-base')") == i
    assert m.match("AutoModel.from_pretrained('princeton-nlp/unsup-simcse-roberta-huge')") is None


# ---- readers ------------------------------------------------------------------------------------

def test_readers_load_every_released_file():
    for hub, files in HUB_FILES.items():
        assert read_api_database(DATA / files.api)
        recs, qs = read_apibench(DATA / files.eval), read_questions(DATA / files.questions)
        assert all(q.question_id <= len(recs) for q in qs), hub
    train = read_apibench(DATA / HUB_FILES["torchhub"].train)
    assert len(train) == 837 and sum(not r.complete for r in train) == 1
    assert split_code("###Instruction: Do X.\n###Output: {'a': 1}") == ("Do X.", "{'a': 1}", True)
    assert split_code("{'Instruction': Do X., 'Output': {'a': 1}}") == ("Do X.", "{'a': 1}", True)


@pytest.mark.parametrize("line, field, match", [
    ('{"code": "###Instruction: q\\n###Output: a", "api_call": "f()", "provider": "p", "api_data": {"api_call": "f()"}}',
     "api_data.domain", "missing field"),
    ('{"code": "###Instruction: q\\n###Output: a", "api_call": "f()", "provider": "p", "api_data": []}',
     "api_data", "expected an API entry object"),
    ('{"code": "no layout here", "api_call": "f()", "provider": "p", "api_data": {"domain": "d", "api_call": "f()"}}',
     "code", "layout"),
    ('{"code": 3, "api_call": "f()", "provider": "p", "api_data": {"domain": "d", "api_call": "f()"}}',
     "code", "expected a string"),
    ('{"code": "###Instruction: q", "api_call": "f()", "provider": "p"', None, "invalid JSON"),
])
def test_apibench_reader_errors_name_file_line_and_field(tmp_path, line, field, match):
    good = '{"code": "###Instruction: q\\n###Output: a", "api_call": "f()", "provider": "p", "api_data": {"domain": "d", "api_call": "f()"}}'
    p = tmp_path / "bench.json"
    p.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=match) as e:
        read_apibench(p)
    assert f"{p}:2" in str(e.value)
    if field:
        assert f"field '{field}'" in str(e.value)


def test_question_reader_refuses_bad_and_repeated_ids(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"question_id": 1, "text": "a"}\n{"question_id": "2", "text": "b"}\n')
    with pytest.raises(DataError, match=r"q.jsonl:2 .*field 'question_id'"):
        read_questions(p)
    p.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 1, "text": "b"}\n')
    with pytest.raises(DataError, match="appears twice"):
        read_questions(p)


def test_apibench_format_builds_sft_examples_with_and_without_documents():
    train = DATA / HUB_FILES["torchhub"].train
    zero = load_examples(train, "apibench")
    oracle = load_examples(train, "apibench", retrieval="oracle")
    assert len(zero) == len(oracle) == 836  # the record cut mid-answer is dropped
    rec = read_apibench(train)[0]
    assert zero[0].messages == [{"role": "user", "content": question_text(rec.instruction)},
                                {"role": "assistant", "content": rec.output}]
    assert oracle[0].messages[0]["content"] == question_text(rec.instruction) + RAT_JOIN + json.dumps(rec.api_data)
    assert rec.output.startswith("{'domain': 'Classification', 'api_call': \"model = torch.hub.load(")
    with pytest.raises(DataError, match="api_database"):
        load_examples(train, "apibench", retrieval="bm25")
    bm25 = load_examples(train, "apibench", retrieval="bm25", api_database=str(DATA / HUB_FILES["torchhub"].api))
    assert "Use this API documentation for reference:  {" in bm25[0].messages[0]["content"]


# ---- prompts ------------------------------------------------------------------------------------

def test_rat_prompt_is_byte_exact_with_the_dossier():
    """Dossier §8.3: "{instruction}\\n \\n Use this API documentation for reference:  {api_json}". In the
    released files the first \\n is a literal backslash-n (it ends every question) and the second a newline."""
    ours = user_prompt("{instruction}\\n", [])  # a question is instruction + literal \n
    ours = ours + RAT_JOIN + "{api_json}"
    expected = "{instruction}\\n \n Use this API documentation for reference:  {api_json}"
    assert ours == expected
    doc = {"domain": "d", "api_call": "f()"}
    assert user_prompt(question_text("Do X."), [doc]) == ' Do X.\\n \n Use this API documentation for reference:  ' + \
        '{"domain": "d", "api_call": "f()"}'
    if DOSSIER.exists():
        text = re.sub(r"\n\s+", " ", DOSSIER.read_text(encoding="utf-8"))
        dossier = re.search(r'`"(\{instruction\}.*?\{api_json\})"`', text).group(1)
        assert dossier == expected.replace("\n", "\\n")  # the dossier writes the newline as \n


def test_question_text_rebuilds_the_released_zero_shot_questions(th):
    rebuilt = sum(question_text(th.records[q.question_id - 1].instruction) == q.text for q in th.questions)
    assert rebuilt >= 185  # question 166 differs by one blank line inside its instruction


# ---- retrieval ----------------------------------------------------------------------------------

def test_bm25_returns_the_document_a_query_was_built_from(th):
    bm = BM25Retriever(th.api)
    for i, entry in enumerate(th.api):
        assert bm.top_k(json.dumps(entry), 1) == [i]
    # a query of the API's own call and description words finds it among near-duplicate MEAL-V2 entries
    hits = sum(bm.retrieve(f"{e['api_call']} {e['description']}", 1)[0] is e for e in th.api)
    assert hits >= 90
    assert len(bm.top_k("image classification", 5)) == 5


# ---- template -----------------------------------------------------------------------------------

def test_gorilla_template_prompt_mask_and_exported_jinja(tokenizer):
    t = get_template("gorilla")
    msgs = [{"role": "user", "content": " What API?\\n"}, {"role": "assistant", "content": "{'domain': 'x'}"}]
    assert t.prompt(msgs[:1]) == "###USER:  What API?\\n###ASSISTANT: "  # dossier §8.3, gorilla_eval.py
    r = t.render(msgs, tokenizer)
    trained = [x for x in r.labels if x != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "{'domain': 'x'}" + tokenizer.eos_token
    # the exported jinja renders the same text; the ids are the prompt and the answer tokenized apart,
    # as generation sees them (BPE would fuse the prompt's final space with the answer's "{")
    assert tokenizer.apply_chat_template(msgs, chat_template=t.chat_template(tokenizer), tokenize=False) == r.text
    prompt = t.prompt(msgs[:1], tokenizer)
    assert tokenizer.apply_chat_template(msgs[:1], chat_template=t.chat_template(tokenizer), tokenize=False,
                                         add_generation_prompt=True) == prompt
    assert r.input_ids == tokenizer(prompt)["input_ids"] + tokenizer("{'domain': 'x'}" + tokenizer.eos_token)["input_ids"]
    assert r.labels[: len(tokenizer(prompt)["input_ids"])] == [IGNORE_INDEX] * len(tokenizer(prompt)["input_ids"])


# ---- the registered eval, end to end on the tiny model -------------------------------------------

def test_apibench_ast_eval_scores_parent_and_derived_under_every_retrieval(tiny_ref, tokenizer, tmp_path):
    from herd.core.registry import EVALS
    from herd.evals.registry import EvalContext

    cfg_cls, fn = EVALS["apibench_ast"]
    cfg = cfg_cls(data=str(DATA), n=2, max_new_tokens=4, temperature=0.0)
    ctx = EvalContext(recipe=None, template=get_template("gorilla"), tokenizer=tokenizer, eval_examples=[],
                      parent_path=tiny_ref.path, derived_path=tiny_ref.path, out_dir=tmp_path, progress=False)
    out = fn(ctx, cfg)
    assert len(out.metrics) == 9  # 3 retrievals x accuracy, hallucination, error
    assert {m["task"] for m in out.metrics} >= {"APIBench AST accuracy % (0-shot)", "APIBench AST error % (oracle)"}
    # a random 2-layer model writes no "api_call": every answer is an error, for both roles
    assert all(m["parent"] == m["derived"] == (100.0 if m["name"] == "error" else 0.0) for m in out.metrics)
    assert "| oracle | derived |" in out.markdown and "141 and 30 of 186" in out.markdown
    rows = [json.loads(x) for x in (tmp_path / "apibench" / "responses_torchhub_derived_bm25.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [1, 2] and rows[0]["metadata"]["verdict"] == "no_api_call"


def test_cli_scores_a_response_file_and_names_a_bad_line(tmp_path, capsys):
    from herd.cli import main

    verdicts = tmp_path / "v.jsonl"
    assert main(["apibench", "score", str(DATA / PUBLISHED_RESPONSES), "--data", str(DATA),
                 "--verdicts", str(verdicts)]) == 0
    out = capsys.readouterr().out
    assert "75.81 %  (141)" in out and "16.13 %  (30)" in out
    assert len(verdicts.read_text().splitlines()) == 186
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"question_id": 1, "text": "x"}\n{"question_id": 0, "text": "y"}\n')
    assert main(["apibench", "score", str(bad), "--data", str(DATA)]) == 2
    assert "r.jsonl:2" in capsys.readouterr().err
