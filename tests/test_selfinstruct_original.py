"""The original Self-Instruct after bootstrapping (yizhongw/self-instruct): classification identification,
instance generation and prepare_for_finetuning's parsing and filters; prompts byte for byte, realistic
responses parsed, resumable runs with a scripted teacher, the tiny in-process teacher and ``herd serve``."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from herd.core.errors import ConfigError
from herd.data import load_examples
from herd.data.builds.selfinstruct import instances as inst_mod
from herd.data.builds.selfinstruct.filters import (
    filter_duplicate_instances,
    filter_invalid_instances,
    limit_instances,
)
from herd.data.builds.selfinstruct.generate import GenerationSettings, format_report, generate_self_instruct
from herd.data.builds.selfinstruct.instances import (
    CLF_SAMPLING,
    instance_sampling,
    is_classification_answer,
    prepare_instances,
    step_paths,
)
from herd.data.builds.selfinstruct.original_templates import (
    input_first_template_for_gen,
    output_first_template_for_clf,
    template_1,
)
from herd.data.builds.selfinstruct.parse import (
    Instance,
    parse_classification_instances,
    parse_generation_instances,
    parse_input_output,
)
from herd.data.builds.selfinstruct.prompt import clf_prompt, instance_prompt, load_seeds
from herd.data.builds.selfinstruct.teachers import Completion, LocalTeacher, OpenAITeacher

from .test_selfinstruct import served_url  # noqa: F401  (the herd serve fixture)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- prompts

def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_templates_are_the_published_ones():
    """Lengths as the source files have them (clf_task_template.py 3,579 characters, instance_gen_template.py
    12,671 with the assignments), pinned by hash."""
    assert len(template_1) + len("template_1 = ''''''") == 3579
    assert (len(output_first_template_for_clf) + len(input_first_template_for_gen)
            + len("output_first_template_for_clf = ''''''\n\ninput_first_template_for_gen = ''''''")) == 12671
    assert _sha(template_1) == "a216fc1add00d4de762934b4c5d15b370bc2099e73ab16b2e64533e8413c4463"
    assert _sha(output_first_template_for_clf) == "09f049afa99e87079878a67c909b83147696ad044cf4cda0bfb74a1201a82f5a"
    assert _sha(input_first_template_for_gen) == "f16bd050e44163a3030f65a6a4fff184e3e64a06ebe8c8c3a3ee426e0aad3fd8"
    # the published quirks survive: a doubled space, trailing spaces, typos, curly apostrophes
    assert "\nTask:  Does the information" in output_first_template_for_clf
    assert "Class label: Not relevant \nPost:" in output_first_template_for_clf
    assert "Sort the given list ascendingly. \nExample 1" in input_first_template_for_gen
    assert "Output: Confucious\n" in input_first_template_for_gen and "I’ve admired" in input_first_template_for_gen
    assert "seperated by comma." in template_1


def test_clf_prompt_is_byte_exact():
    seed = load_seeds()[151]
    assert seed.is_classification and seed.instruction == "Tell if the sentence contains toxic language."
    p = clf_prompt("  " + seed.instruction + "\n")  # the original strips the instruction
    assert p.startswith("Can the following task be regarded as a classification task with finite output labels?"
                        "\n\nTask: Given my personality and the job, tell me if I would be suitable.\n"
                        "Is it classification? Yes\n\nTask: Give me an example")
    assert p.endswith("Task: Given a set of numbers, find all possible subsets that sum to a given number.\n"
                      "Is it classification? No\n\nTask: Tell if the sentence contains toxic language.\n"
                      "Is it classification?")
    assert p == template_1 + " Tell if the sentence contains toxic language.\nIs it classification?"
    assert len(p.encode()) == 3628 and _sha(p) == "a6b8f7bba76f36b608169358d8f2bcf1613bd57eb6b0c4b696f3384a0570ebb8"


def test_instance_prompts_are_byte_exact():
    seeds = load_seeds()
    clf = instance_prompt(seeds[151].instruction, True)  # output-first
    assert clf.startswith("Given the classification task definition and the class labels, generate an input that "
                          "corresponds to each of the class labels. If the task doesn't require input, just "
                          "generate possible class labels.\n\nTask: Classify the sentiment of the sentence into "
                          "positive, negative, or mixed.\nClass label: mixed\nSentence: I enjoy")
    assert clf.endswith("all of these are valid inputs.\nClass label: (e)\n\n"
                        "Task: Tell if the sentence contains toxic language.\n")
    assert len(clf.encode()) == 6898 and _sha(clf) == "42a125626ed8cb0e88707d18693e70f88a02ecfcd73f2a1cdaf0ee9027c5ce3a"
    gen = instance_prompt(seeds[0].instruction, False)  # input-first
    assert not seeds[0].is_classification
    assert gen.startswith("Come up with examples for the following tasks. Try to generate multiple examples when "
                          "possible. If the task doesn't require additional input, you can generate the output "
                          "directly.\n\nTask: Which exercises are best for reducing belly fat at home?\nOutput:\n"
                          "- Lying Leg Raises\n")
    assert gen.endswith("Thanks again,\n[Your Name]\n\nTask: Is there anything I can eat for a breakfast that "
                        "doesn't include eggs, yet includes protein, and has roughly 700-1000 calories?\n")
    assert len(gen.encode()) == 5878 and _sha(gen) == "a9a312778d27639bd72dc4a3c0971773b3cfe47a6d1b9e9f339cd64e4c7f19c4"


def test_published_sampling_settings():
    assert (CLF_SAMPLING.max_tokens, CLF_SAMPLING.temperature, CLF_SAMPLING.top_p, CLF_SAMPLING.stop,
            CLF_SAMPLING.presence_penalty) == (3, 0.0, 0.0, ("\n", "Task"), 0.0)
    for any_clf, max_tokens in ((True, 300), (False, 350)):
        s = instance_sampling(any_clf)
        assert (s.max_tokens, s.temperature, s.top_p, s.stop, s.presence_penalty) == (
            max_tokens, 0.0, 0.0, ("Example 6", "Task:"), 1.5)
    assert [is_classification_answer(x) for x in (" Yes", "yes\n", " YES", " No", "Yes.", " yES", "")] == [
        True, True, True, False, False, False, False]


# ---------------------------------------------------------------- parsing

SENTIMENT = "Classify the sentiment of a movie review as positive or negative."
SENTIMENT_RESPONSE = ("Class label: Positive\n"
                      "Review: An absolute delight from start to finish, with a cast at the top of its game.\n"
                      "Class label: Negative\n"
                      "Review: Two hours of my life I will never get back.\n\n")
CONVERT = "Convert the temperature from Fahrenheit to Celsius."
CONVERT_RESPONSE = ("Example 1\nTemperature: 32 F\nOutput: 0 C\n"
                    "Example 2\nTemperature: 212 F\nOutput: 100 C\n"
                    "Example 3\nTemperature: 212 F\nOutput: 100 C\n\n")
HAIKU = "Write a haiku about autumn leaves."
HAIKU_RESPONSE = "Output:\nCrimson leaves drift down\nwhispering to the cold ground\nautumn says goodbye\n\n"
PRIME = "Tell me if the number is prime."
PRIME_RESPONSE = "".join(f"Class label: {'Prime' if p else 'Not prime'}\nNumber: {n}\n"
                         for n, p in ((7, 1), (8, 0), (13, 1), (21, 0), (29, 1), (33, 0)))
PRIME_RESPONSE += "Class label: Prime\nNumber: 4"  # cut at the length limit
CAPITAL = "Find the capital city of the given country."
CAPITAL_RESPONSE = "The capital of France is Paris.\n\n"  # neither format


def test_parse_output_first_classification_response():
    got, counts = parse_classification_instances(SENTIMENT_RESPONSE, SENTIMENT + " ", "stop")
    assert got == [
        Instance(SENTIMENT, "Review: An absolute delight from start to finish, with a cast at the top of its game.",
                 "Positive"),
        Instance(SENTIMENT, "Review: Two hours of my life I will never get back.", "Negative")]
    assert counts == Counter(parsed=2)
    # a task without input: labels only (the template's "Tell me what's the second largest city ...")
    got, _ = parse_classification_instances("Class label: Montreal\n\n", "Second largest city in Canada?", "stop")
    assert got == [Instance("Second largest city in Canada?", "", "Montreal")]
    # a multi-line input stays whole; the length limit drops the last instance
    got, counts = parse_classification_instances(PRIME_RESPONSE, PRIME, "length")
    assert len(got) == 6 and got[-1] == Instance(PRIME, "Number: 33", "Not prime")
    assert counts == Counter(parsed=7, truncated=1)
    got, counts = parse_classification_instances(CAPITAL_RESPONSE, CAPITAL, "stop")
    assert got == [] and counts == Counter(no_instances=1)


def test_parse_input_first_generation_response():
    got, counts = parse_generation_instances(CONVERT_RESPONSE, CONVERT, "stop")
    assert got == [Instance(CONVERT, "Temperature: 32 F", "0 C"), Instance(CONVERT, "Temperature: 212 F", "100 C"),
                   Instance(CONVERT, "Temperature: 212 F", "100 C")]
    assert counts == Counter(parsed=3)
    got, _ = parse_generation_instances(HAIKU_RESPONSE, HAIKU, "stop")  # no input: output directly
    assert got == [Instance(HAIKU, "", "Crimson leaves drift down\nwhispering to the cold ground\nautumn says goodbye")]
    # the template's own multi-line instance: "Output:" on its own line, the paragraph and question as input
    math = ("Example 1\nParagraph: In 2018 there were 38,390 deaths.\nQuestion: How many?\nOutput:\n"
            "38390 - 30470 = 7920. \nSo, 7920 more.\nExample 2\nParagraph: x\nQuestion: y\nOutput: z")
    got, counts = parse_generation_instances(math, "Answer a math question.", "length")
    assert got == [Instance("Answer a math question.", "Paragraph: In 2018 there were 38,390 deaths.\nQuestion: How many?",
                            "38390 - 30470 = 7920. \nSo, 7920 more.")]
    assert counts == Counter(parsed=2, truncated=1)
    got, counts = parse_generation_instances(CAPITAL_RESPONSE, CAPITAL, "stop")
    assert got == [] and counts == Counter(no_instances=1)


def test_parse_input_output_rules():
    assert parse_input_output("Input: 3 ft\nOutput: 36 in") == ("3 ft", "36 in")
    assert parse_input_output("List: [3, 1]\nOutput 1: [1, 3]\nInput 2: [5, 4]\nOutput 2: [4, 5]") == (
        "List: [3, 1]", "[1, 3]")  # a second pair is cut off
    assert parse_input_output("just an answer") == ("", "just an answer")
    # the template's own "Input 2 - List:" keeps its prefix: only "Input <n>:" is removed
    assert parse_input_output("Input 2 - List: [9, 1]\nOutput: [1, 9]") == ("Input 2 - List: [9, 1]", "[1, 9]")
    assert parse_input_output("Input 2: [9, 1]\nOutput: [1, 9]") == ("[9, 1]", "[1, 9]")


# ---------------------------------------------------------------- filters

def test_invalid_instance_filters():
    c: Counter = Counter()
    insts = [Instance("t", "same", "same"), Instance("t", "", ""), Instance("t", "x", ""),
             Instance("t", "Sentence:", "Positive"), Instance("t", "x", "The answer is:"), Instance("t", "x", "y")]
    assert filter_invalid_instances(insts, c) == [Instance("t", "x", "y")]
    assert c == Counter(same_input_output=2, empty_output=1, colon_end=2)


def test_duplicate_and_conflicting_instances():
    c: Counter = Counter()
    a, b = Instance("t", "in", "out"), Instance("t", "", "free")
    assert filter_duplicate_instances([a, b, a, b, Instance("t", "", "other")], c) == [
        a, b, Instance("t", "", "other")]  # empty inputs may differ in output
    assert c == Counter(duplicate=2)
    c = Counter()
    assert filter_duplicate_instances([a, b, Instance("t", "in", "different")], c) == []  # the whole task goes
    assert c == Counter(conflicting_outputs=3)


def test_at_most_five_instances_per_instruction():
    insts = [Instance("t", str(i), f"o{i}") for i in range(8)]
    c: Counter = Counter()
    got = limit_instances(insts, random.Random(0), c)
    assert len(got) == 5 and set(got) <= set(insts) and got == sorted(got, key=insts.index)
    assert c == Counter(over_limit=3)
    assert limit_instances(insts[:5], random.Random(0), c) == insts[:5]


def test_prepare_instances_applies_the_steps_in_order():
    insts, counts = prepare_instances(PRIME_RESPONSE, PRIME, True, "length", random.Random(1))
    assert len(insts) == 5 and counts == Counter(parsed=7, truncated=1, over_limit=1)
    insts, counts = prepare_instances(CONVERT_RESPONSE, CONVERT, False, "stop", random.Random(1))
    assert len(insts) == 2 and counts == Counter(parsed=3, duplicate=1)


# ---------------------------------------------------------------- runs

class ScriptedTeacher:
    """Answers as a good teacher would, in the original's formats; records what it was asked."""

    chat, name, key = False, "scripted", "scripted"
    CLF = {SENTIMENT: " Yes", CONVERT: " No", HAIKU: " No", PRIME: " yes", CAPITAL: " No"}
    RESPONSES = {SENTIMENT: (SENTIMENT_RESPONSE, "stop"), CONVERT: (CONVERT_RESPONSE, "stop"),
                 HAIKU: (HAIKU_RESPONSE, "stop"), PRIME: (PRIME_RESPONSE, "length"),
                 CAPITAL: (CAPITAL_RESPONSE, "stop")}

    def __init__(self, fail_at: int | None = None):
        self.calls: list[tuple[list[str], object]] = []
        self.fail_at = fail_at

    def complete(self, prompts, s):
        self.calls.append((prompts, s))
        if len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        out = []
        for p in prompts:
            if p.endswith("\nIs it classification?"):
                instr = p[len(template_1) + 1:-len("\nIs it classification?")]
                out.append(Completion(self.CLF[instr], "stop"))
            else:
                out.append(Completion(*self.RESPONSES[p.rsplit("\n\nTask: ", 1)[1][:-1]]))
        return out


INSTRUCTIONS = [SENTIMENT, CONVERT, HAIKU, PRIME, CAPITAL]


def _adopt(out: Path, instructions: list[str]) -> None:
    """Bootstrapped instructions found beside OUT (e.g. the original's machine_generated_instructions.jsonl)."""
    step_paths(out)["instructions"].write_text("".join(json.dumps({"instruction": i}) + "\n" for i in instructions))


def _cfg(**kw) -> GenerationSettings:
    return GenerationSettings(**{"variant": "self-instruct", "n": 5, "request_batch_size": 2, "seed": 3, **kw})


def test_scripted_run_writes_alpaca_records_and_reports(tmp_path):
    out = tmp_path / "si.jsonl"
    _adopt(out, INSTRUCTIONS)
    teacher = ScriptedTeacher()
    st = generate_self_instruct(_cfg(), teacher, out, progress=False, log=lambda m: None)
    # step 2: 3 batches of the clf template; step 3: 3 batches, 300 tokens where a batch holds a clf task
    assert [len(p) for p, _ in teacher.calls] == [2, 2, 1, 2, 2, 1]
    assert [s.max_tokens for _, s in teacher.calls] == [3, 3, 3, 300, 300, 350]
    assert all(s.temperature == 0 and s.top_p == 0 for _, s in teacher.calls)
    assert teacher.calls[3][0] == [instance_prompt(SENTIMENT, True), instance_prompt(CONVERT, False)]
    paths = step_paths(out)
    clf = [json.loads(x) for x in paths["clf"].read_text().splitlines()]
    assert clf[0] == {"instruction": SENTIMENT, "is_classification": " Yes", "finish_reason": "stop"}
    raw = [json.loads(x) for x in paths["raw"].read_text().splitlines()]
    assert [r["is_classification"] for r in raw] == [True, False, False, True, False]
    assert raw[3]["raw_instances"] == PRIME_RESPONSE and raw[3]["finish_reason"] == "length"
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert recs[:5] == [
        {"instruction": SENTIMENT, "input": "Review: An absolute delight from start to finish, with a cast at the "
         "top of its game.", "output": "Positive", "is_classification": True},
        {"instruction": SENTIMENT, "input": "Review: Two hours of my life I will never get back.",
         "output": "Negative", "is_classification": True},
        {"instruction": CONVERT, "input": "Temperature: 32 F", "output": "0 C", "is_classification": False},
        {"instruction": CONVERT, "input": "Temperature: 212 F", "output": "100 C", "is_classification": False},
        {"instruction": HAIKU, "input": "", "output": "Crimson leaves drift down\nwhispering to the cold ground\n"
         "autumn says goodbye", "is_classification": False}]
    assert len(recs) == 10 and [r["instruction"] for r in recs[5:]] == [PRIME] * 5
    assert len(load_examples(out, "alpaca")) == 10
    assert st.instances == {"parsed": 13, "records": 10, "instructions_with_records": 4,
                            "dropped": {"no_instances": 1, "truncated": 1, "duplicate": 1, "over_limit": 1},
                            "instructions": 5, "classification": 2, "clf_finish": {"stop": 5},
                            "instance_finish": {"stop": 4, "length": 1}}
    report = format_report(st, out)
    assert "classification tasks 2 of 5" in report and "records 10 for 4 instructions" in report
    assert re.search(r"dropped no_instances +1 +\(responses\)", report)
    assert re.search(r"dropped over_limit +1 +7\.7 % of instances", report)
    assert st.to_dict()["instances"]["records"] == 10
    # nothing left to do: a re-run asks the teacher nothing and writes the same file
    before = out.read_bytes()
    again = ScriptedTeacher()
    generate_self_instruct(_cfg(), again, out, progress=False, log=lambda m: None)
    assert again.calls == [] and out.read_bytes() == before


def test_scripted_run_resumes_after_interruption(tmp_path):
    ref = tmp_path / "ref" / "si.jsonl"
    ref.parent.mkdir()
    _adopt(ref, INSTRUCTIONS)
    generate_self_instruct(_cfg(), ScriptedTeacher(), ref, progress=False, log=lambda m: None)

    out = tmp_path / "run" / "si.jsonl"
    out.parent.mkdir()
    _adopt(out, INSTRUCTIONS)
    with pytest.raises(KeyboardInterrupt):  # killed in step 3's second batch
        generate_self_instruct(_cfg(), ScriptedTeacher(fail_at=5), out, progress=False, log=lambda m: None)
    raw = step_paths(out)["raw"]
    lines = raw.read_text().splitlines(keepends=True)
    assert len(lines) == 2 and not out.exists()
    # a batch that was half-written when the process died: one whole line of it and a torn one
    ref_lines = step_paths(ref)["raw"].read_text().splitlines(keepends=True)
    raw.write_text("".join(lines) + ref_lines[2] + ref_lines[3][:40])
    teacher = ScriptedTeacher()
    generate_self_instruct(_cfg(), teacher, out, progress=False, log=lambda m: None)
    assert [len(p) for p, _ in teacher.calls] == [2, 1]  # step 3 redoes its second batch whole, then the third
    for step in ("instructions", "clf", "raw"):
        assert step_paths(out)[step].read_bytes() == step_paths(ref)[step].read_bytes()
    assert out.read_bytes() == ref.read_bytes()
    with pytest.raises(ConfigError, match="other settings"):
        generate_self_instruct(_cfg(seed=4), ScriptedTeacher(), out, progress=False, log=lambda m: None)


def test_output_of_an_earlier_instructions_only_run_is_not_overwritten(tmp_path):
    out = tmp_path / "old.jsonl"
    out.write_text(json.dumps({"instruction": SENTIMENT, "request_idx": 0}) + "\n")
    (tmp_path / "old.jsonl.state.json").write_text(json.dumps({"settings": {"variant": "self-instruct"}}))
    with pytest.raises(ConfigError, match="rename it to old.machine_generated_instructions.jsonl"):
        generate_self_instruct(_cfg(), ScriptedTeacher(), out, progress=False)
    new = tmp_path / "new.jsonl"  # and Alpaca's variant does not take over the original's output
    _adopt(new, INSTRUCTIONS)
    generate_self_instruct(_cfg(), ScriptedTeacher(), new, progress=False, log=lambda m: None)
    with pytest.raises(ConfigError, match="holds the original Self-Instruct's instances"):
        generate_self_instruct(GenerationSettings(n=1), ScriptedTeacher(), new, progress=False)


class _Interrupting:
    """The tiny teacher, killed on its ``fail_at``-th request batch."""

    def __init__(self, teacher, fail_at):
        self.t, self.fail_at, self.n = teacher, fail_at, 0
        self.chat, self.key, self.name = teacher.chat, teacher.key, teacher.name

    def complete(self, prompts, s):
        self.n += 1
        if self.n == self.fail_at:
            raise KeyboardInterrupt
        return self.t.complete(prompts, s)


def test_tiny_teacher_runs_all_steps_and_resumes(tmp_path, monkeypatch):
    """Bootstrapping (2 requests), classification, instances, records: noise, so structure and counts only."""
    monkeypatch.setattr(inst_mod, "INSTANCE_MAX_TOKENS", {True: 20, False: 24})  # 300/350 cost minutes on CPU
    teacher = LocalTeacher("tiny", batch_size=2)
    seeds = load_seeds()
    adopted = [seeds[151].instruction, seeds[0].instruction, seeds[10].instruction]
    cfg = _cfg(n=4, max_tokens=16, max_requests=2)

    a = tmp_path / "a" / "tiny.jsonl"
    a.parent.mkdir()
    _adopt(a, adopted)
    st = generate_self_instruct(cfg, teacher, a, progress=False, log=lambda m: None)
    assert st.requests == 2 and st.kept >= 3
    n = st.kept
    stats = st.instances
    assert stats["instructions"] == n and sum(stats["clf_finish"].values()) == n
    assert sum(stats["instance_finish"].values()) == n
    assert stats["parsed"] == stats["records"] + sum(v for k, v in stats["dropped"].items() if k != "no_instances")
    for step in ("clf", "raw"):
        recs = [json.loads(x) for x in step_paths(a)[step].read_text().splitlines()]
        assert [r["instruction"] for r in recs][:3] == adopted and len(recs) == n
    raw = [json.loads(x) for x in step_paths(a)["raw"].read_text().splitlines()]
    assert set(raw[0]) == {"instruction", "is_classification", "raw_instances", "finish_reason"}
    recs = [json.loads(x) for x in a.read_text().splitlines()]
    assert len(recs) == stats["records"]
    assert all(set(r) == {"instruction", "input", "output", "is_classification"} and r["output"] for r in recs)
    report = format_report(st, a)
    assert "self-instruct instances:" in report and f"of {n} (finish:" in report

    # killed during step 3 (request batches: bootstrapping 1, clf 2, instances 2): the restart continues
    b = tmp_path / "b" / "tiny.jsonl"
    b.parent.mkdir()
    _adopt(b, adopted)
    with pytest.raises(KeyboardInterrupt):
        generate_self_instruct(cfg, _Interrupting(teacher, fail_at=5), b, progress=False, log=lambda m: None)
    assert step_paths(b)["raw"].read_text().count("\n") == 2
    generate_self_instruct(cfg, teacher, b, progress=False, log=lambda m: None)
    for step in ("instructions", "clf", "raw"):
        assert step_paths(b)[step].read_bytes() == step_paths(a)[step].read_bytes()
    assert b.read_bytes() == a.read_bytes()


def test_openai_endpoint_teacher_runs_the_original_steps(served_url, tmp_path):  # noqa: F811
    """Through ``herd serve``: top_p 0 goes out as the equivalent 1 (the server requires top_p > 0), the
    server's 40-token limit makes step 3 shrink max_tokens and retry."""
    teacher = OpenAITeacher(served_url, api_key="sk-test", concurrency=2)
    out = tmp_path / "url.jsonl"
    seeds = load_seeds()
    _adopt(out, [seeds[151].instruction, seeds[0].instruction])
    st = generate_self_instruct(_cfg(n=2), teacher, out, progress=False, log=lambda m: None)
    assert st.requests == 0 and st.instances["instructions"] == 2
    assert sum(st.instances["instance_finish"].values()) == 2
    assert step_paths(out)["raw"].read_text().count("\n") == 2 and out.exists()


def test_self_instruct_build_accepts_the_original_variant(tmp_path, monkeypatch):
    """The ``self_instruct`` data build trains on the instance records (Alpaca format)."""
    from herd.core.errors import HerdError
    from herd.data.builds import BuildContext
    from herd.data.builds.selfinstruct import build as build_mod

    teacher = ScriptedTeacher()
    monkeypatch.setattr(build_mod, "make_teacher", lambda spec, **kw: teacher)
    cfg = build_mod.SelfInstructBuild(name="si", variant="self-instruct", n=5, request_batch_size=2)
    out_path = tmp_path / "si.jsonl"
    final = out_path.with_name(f"si-{build_mod.sha256_json(teacher.key)[:8]}.jsonl")
    _adopt(final, INSTRUCTIONS)
    res = build_mod.build_self_instruct(cfg, out_path, BuildContext(recipe=None, base_spec="tiny", workspace=tmp_path,
                                                                    progress=False))
    assert res.path == final and res.format == "alpaca" and res.report["instances"]["records"] == 10
    assert len(load_examples(res.path, "alpaca")) == 10
    empty = tmp_path / "e.jsonl"  # instructions whose responses parse to nothing: no dataset, an error
    _adopt(empty.with_name(f"e-{build_mod.sha256_json(teacher.key)[:8]}.jsonl"), [CAPITAL])
    with pytest.raises(HerdError, match="produced no instance"):
        build_mod.build_self_instruct(cfg.model_copy(update={"n": 1}), empty,
                                      BuildContext(recipe=None, base_spec="tiny", workspace=tmp_path, progress=False))
