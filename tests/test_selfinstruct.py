"""Self-Instruct generation (recipes.md §1.2): prompt bytes, parsing, filters, exact novelty, resumable runs
with an in-process teacher and with a real OpenAI-compatible server (``herd serve``) on loopback."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from herd.core.errors import ConfigError, HerdError
from herd.data import load_examples
from herd.data.builds.selfinstruct.filters import blacklist_regex, filter_reason
from herd.data.builds.selfinstruct.generate import GenerationSettings, generate_self_instruct, state_path
from herd.data.builds.selfinstruct.novelty import BruteForcePool, NoveltyPool, lcs_length, rouge_l_f
from herd.data.builds.selfinstruct.parse import parse_alpaca, parse_self_instruct
from herd.data.builds.selfinstruct.prompt import (
    ALPACA,
    BLACKLIST_ALPACA,
    BLACKLIST_SELF_INSTRUCT,
    SELF_INSTRUCT,
    build_prompt,
    default_prompt_file,
    load_prompt_header,
    load_seeds,
    request_rng,
)
from herd.data.builds.selfinstruct.teachers import LocalTeacher, OpenAITeacher, RateLimiter, Sampling

from .conftest import ALPACA_DEMO, ALPACA_TINY, SHARED

ROOT = Path(__file__).resolve().parents[1]
FILTER_REASONS = ("too_short", "too_long", "blacklist", "write_a_program", "punctuation_start",
                  "non_ascii_start", "empty_output", "similar")


@pytest.fixture(scope="module")
def seeds():
    return load_seeds()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny teacher (hidden 64) gains nothing from threads, and on a loaded CPU they spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- prompts

def test_alpaca_prompt_is_byte_exact(seeds):
    header = load_prompt_header()
    assert header.endswith("List of 20 tasks:") and len(header.encode()) == 1749  # PROVENANCE.md
    got = build_prompt(ALPACA, _FixedPick([seeds[88], seeds[58], seeds[25]]), seeds, header, machine=["x"])
    expected = (header + "\n"
                "###\n1. Instruction: Question: in which year did Yao Ming retire? Answer\n"
                "1. Input:\n<noinput>\n1. Output:\nYao Ming retired in 2011.\n"
                "###\n2. Instruction: Convert the following measurement.\n"
                "2. Input:\n3 ft = _____ in.\n2. Output:\n3 ft = 36 in.\n"
                "###\n3. Instruction: Find the four smallest perfect numbers.\n"
                "3. Input:\n<noinput>\n3. Output:\n6, 28, 496, and 8128\n"
                "###\n4. Instruction:")
    assert got == expected


class _FixedPick:
    """A random.Random stand-in that 'samples' given items, to pin which seeds a prompt shows."""

    def __init__(self, items):
        self.items = items

    def sample(self, population, k):
        assert all(x in population for x in self.items) and k == len(self.items)
        return list(self.items)


def test_alpaca_demos_come_only_from_the_175_seeds(seeds):
    assert len(seeds) == 175 and sum(s.is_classification for s in seeds) == 26
    header, machine = load_prompt_header(), [f"Machine task number {i} about lakes." for i in range(50)]
    instrs = {" ".join(s.instruction.split()).rstrip(":") for s in seeds}
    for r in range(40):
        prompt = build_prompt(ALPACA, request_rng(7, r), seeds, header, machine)
        shown = [line.split(". Instruction: ", 1)[1] for line in prompt.splitlines() if ". Instruction: " in line]
        assert len(shown) == 3 and all(s in instrs for s in shown)
    # deterministic per (seed, request): a resumed run draws the same demonstrations
    assert build_prompt(ALPACA, request_rng(7, 3), seeds, header, []) == \
        build_prompt(ALPACA, request_rng(7, 3), seeds, header, machine)


def test_self_instruct_prompt_mixes_six_seeds_and_two_machine_tasks(seeds):
    machine = ["Name three rivers that flow through more than two countries.",
               "Rewrite the sentence so that it uses the passive voice.",
               "Suggest a name for a bakery that sells only bread."]
    prompt = build_prompt(SELF_INSTRUCT, request_rng(1, 0), seeds, "", machine)
    lines = prompt.split("\n")
    assert lines[0] == "Come up with a series of tasks:" and lines[-1] == "9."
    assert [ln.split(". ", 1)[0] for ln in lines[1:-1]] == [str(i) for i in range(1, 9)]
    assert sum(ln.split(". ", 1)[1] in machine for ln in lines[1:-1]) == 2


# ---------------------------------------------------------------- parsing

RESPONSE = """ Classify the following sentence as either positive or negative sentiment.
4. Input:
I can't believe how slow the service was at that restaurant.
4. Output:
Negative
###
5. Instruction: Suggest three ways to reduce household water use.
5. Input:
<noinput>
5. Output:
1. Take shorter showers.
2. Fix leaking taps.
3. Water the garden in the early morning.
###
6. Instruction: Translate the sentence into French.
6. Output:
Je suis content.
###
8. Instruction: Give a synonym for the given word.
8. Input:
happy
8. Output:
joyful
###
8. Instruction: Explain why the sky appears blue during the day.
8. Input:
<noinput>
8. Output:
Sunlight is scattered by the molecules in the air, and blue light is scattered"""


def test_parse_alpaca_response_drops_malformed_and_truncated_last_item():
    tasks, dropped = parse_alpaca(RESPONSE, 3, "length")
    assert [t.record() for t in tasks] == [
        {"instruction": "Classify the following sentence as either positive or negative sentiment.",
         "input": "I can't believe how slow the service was at that restaurant.", "output": "Negative"},
        {"instruction": "Suggest three ways to reduce household water use.", "input": "",
         "output": "1. Take shorter showers.\n2. Fix leaking taps.\n3. Water the garden in the early morning."}]
    # item 6 lacks its Input, item "8" sits where 7 belongs: malformed; the last one is cut by the length limit
    assert dropped == Counter(malformed=2, truncated=1)
    tasks, dropped = parse_alpaca(RESPONSE, 3, "stop")
    assert len(tasks) == 3 and tasks[-1].instruction.startswith("Explain why the sky")
    assert dropped == Counter(malformed=2)
    # a chat model restating the header is not prefixed twice
    chat_tasks, _ = parse_alpaca("4. Instruction:" + RESPONSE, 3, "length", chat=True)
    assert [t.record() for t in chat_tasks] == [t.record() for t in parse_alpaca(RESPONSE, 3, "length")[0]]


def test_parse_self_instruct_response():
    text = " Find the odd one out in the list.\n10. write a haiku about   autumn leaves.\n11 . Name it\n\n"
    tasks, dropped = parse_self_instruct(text, "stop")
    assert [t.instruction for t in tasks] == ["Find the odd one out in the list.",
                                              "Write a haiku about autumn leaves.", "Name it"]
    assert parse_self_instruct(text, "length") == ([], Counter(response_truncated=1))


# ---------------------------------------------------------------- filters

@pytest.mark.parametrize(("instruction", "reason"), [
    ("Summarize this article.", "too_short"),                     # 3 words
    ("Summarize this article briefly.", None),                    # 4 words
    (" ".join(["word"] * 150), None),
    (" ".join(["word"] * 151), "too_long"),
    ("Describe the picture of a sunset over the sea.", "blacklist"),
    ("Explain how to GO TO the nearest station.", "blacklist"),   # case-insensitive, two-word entry
    ("Create a flowchart for the hiring process.", "blacklist"),
    ("Explain what a hash mapping does in Python.", None),       # 'mapping' is not the word 'map'
    ("List the main graphical user interface toolkits.", None),  # 'graphical' is not 'graph'
    ("Write a program that prints the first ten primes.", "write_a_program"),
    ("write a program that prints the first ten primes.", None),  # case-sensitive, as published
    ('"Carpe diem": explain what the phrase means.', "punctuation_start"),
    ("¿Cómo se dice hello en inglés por favor?", "non_ascii_start"),
])
def test_alpaca_filters(instruction, reason):
    assert filter_reason(instruction, blacklist_regex(BLACKLIST_ALPACA)) == reason


def test_original_self_instruct_blacklist_is_shorter():
    text = "Compose a short piece of music for a birthday."
    assert filter_reason(text, blacklist_regex(BLACKLIST_ALPACA)) == "blacklist"
    assert filter_reason(text, blacklist_regex(BLACKLIST_SELF_INSTRUCT)) is None


# ---------------------------------------------------------------- novelty

def _real_instructions() -> list[str]:
    out = [json.loads(x)["instruction"] for x in (SHARED / "self_instruct_seed" / "seed_tasks.jsonl").open()]
    for path in (ALPACA_TINY, ALPACA_DEMO):
        out += [e.messages[-2]["content"] for e in load_examples(path, "alpaca")]
    return out


def _near_duplicates(texts: list[str], rng: random.Random) -> list[str]:
    """Edits of real instructions: dropped, swapped and replaced words put many near 0.7."""
    out = []
    for t in texts:
        w = t.split()
        if len(w) < 4:
            continue
        op = rng.randrange(3)
        i = rng.randrange(len(w))
        if op == 0:
            w = w[:i] + w[i + 1:]
        elif op == 1:
            j = rng.randrange(len(w))
            w[i], w[j] = w[j], w[i]
        else:
            w[i:i + 2] = ["banana"]
        out.append(" ".join(w))
    return out


def test_rouge_l_matches_rouge_score_and_the_boundary_is_kept():
    from rouge_score import rouge_scorer

    rng = random.Random(0)
    for _ in range(3000):
        a = [rng.choice("abcdef") for _ in range(rng.randint(0, 25))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 25))]
        assert rouge_l_f(a, b) == rouge_scorer._score_lcs(a, b).fmeasure
        assert lcs_length(a, b) == rouge_scorer._lcs_table(a, b)[-1][-1]
    for pool in (NoveltyPool(["a b c d e f g h i j"]), BruteForcePool(["a b c d e f g h i j"])):
        assert pool.check("a b c d e f g x y z").novel          # F = 0.7 exactly: kept (reject only > 0.7)
        assert not pool.check("a b c d e f g h x y").novel      # F = 0.8
        assert pool.check("...").novel                          # no tokens: every F is 0


def test_novelty_fast_path_decides_exactly_like_brute_force():
    real = _real_instructions()
    seeds, stream = real[:175], real[175:]
    rng = random.Random(3)
    stream = stream[:450] + _near_duplicates(rng.sample(stream[:450], 200), rng) + stream[:40]
    rng.shuffle(stream)
    fast, brute = NoveltyPool(seeds), BruteForcePool(seeds)
    decisions = Counter()
    for text in stream:
        f, b = fast.check(text), brute.check(text)
        assert f.novel == b.novel, (text, b.score, fast.tokens[b.match])
        if not f.novel:
            assert f.score > 0.7 and f.score <= b.score
        else:
            fast.add(text, f.tokens)
            brute.add(text, b.tokens)
        decisions[f.novel] += 1
    assert decisions[True] > 300 and decisions[False] > 150, decisions
    assert fast.lcs_computed < len(stream) * len(fast) / 20  # the bound skipped almost every LCS


# ---------------------------------------------------------------- the whole pipeline

def _check_state(out: Path, requests: int) -> dict:
    st = json.loads(state_path(out).read_text())
    assert st["requests"] == requests and sum(st["finish"].values()) == requests
    filtered = sum(st["rejected"].get(k, 0) for k in FILTER_REASONS)
    assert st["items"] == st["kept"] - st["adopted"] + filtered
    lines = [ln for ln in out.read_text().splitlines() if ln.strip()]
    assert len(lines) == st["kept"] and out.stat().st_size == st["bytes"]
    for ln in lines:
        rec = json.loads(ln)
        assert rec["instruction"] and rec["output"]
    if lines:
        assert len(load_examples(out, "alpaca")) == len(lines)
    return st


def test_the_engine_teacher_decodes_as_transformers_does():
    """The local teacher on herd's engine (what derive and `herd generate` use) gives transformers'
    greedy completions: same text at the stop string, same finish reasons, EOS banned as Alpaca did."""
    from herd.engine.generation import generate_ids

    hf = LocalTeacher("tiny", batch_size=2)
    engine = LocalTeacher("tiny", batch_size=2, generate_ids=generate_ids)
    engine.model = hf.model  # one set of random weights
    prompts = ["Come up with a series of tasks:\n1. Instruction: Write a poem.\n2.",
               "List three", "Instruction: Explain gravity to a child.\nOutput:"]
    for stop in (("\n2",), ("e",), ()):
        s = Sampling(max_tokens=20, temperature=0.0, top_p=1.0, stop=stop, ban_eos=True)
        want, got = hf.complete(prompts, s), engine.complete(prompts, s)
        assert [c.text for c in got] == [c.text for c in want], stop
        assert [c.finish_reason for c in got] == [c.finish_reason for c in want], stop
    assert any(c.finish_reason == "stop" for c in engine.complete(prompts, Sampling(20, 0.0, 1.0, ("e",))))


def test_tiny_teacher_pipeline_counts_and_resumes(tmp_path):
    teacher = LocalTeacher("tiny", batch_size=2)
    cfg = dict(n=50, request_batch_size=2, max_tokens=48, seed=5)
    a = tmp_path / "a.jsonl"
    logs: list[str] = []
    generate_self_instruct(GenerationSettings(**cfg, max_requests=2), teacher, a, progress=False, log=logs.append)
    first = _check_state(a, 2)
    assert sum(first["rejected"].values()) >= 2  # garbage: every response dropped and counted
    with a.open("a") as f:
        f.write('{"instruction": "half-written')  # a batch killed mid-write
    generate_self_instruct(GenerationSettings(**cfg, max_requests=4), teacher, a, progress=False, log=logs.append)
    second = _check_state(a, 4)
    assert any("continuing" in m for m in logs)
    assert all(second["rejected"].get(k, 0) >= v for k, v in first["rejected"].items())
    b = tmp_path / "b.jsonl"  # one unbroken run ends exactly where the resumed one did
    generate_self_instruct(GenerationSettings(**cfg, max_requests=4), teacher, b, progress=False, log=logs.append)
    assert _check_state(b, 4) == second and b.read_bytes() == a.read_bytes()
    with pytest.raises(ConfigError, match="other settings"):
        generate_self_instruct(GenerationSettings(**{**cfg, "seed": 6}, max_requests=6), teacher, a,
                               progress=False)


def test_original_self_instruct_variant_runs_with_its_own_settings(tmp_path):
    """Temperature 0.7, top_p 0.5, presence penalty 2 (applied in-process), whole responses dropped at the limit."""
    out = tmp_path / "orig.jsonl"
    teacher = LocalTeacher("tiny", batch_size=2)
    st = generate_self_instruct(GenerationSettings(variant="self-instruct", n=5, request_batch_size=2, max_tokens=12,
                                                   max_requests=2), teacher, out, progress=False)
    assert st.settings["temperature"] == 0.7 and st.settings["top_p"] == 0.5 and "prompt_sha256" not in st.settings
    assert st.requests == 2 and st.finish["length"] + st.finish["stop"] == 2
    assert st.rejected["response_truncated"] == st.finish["length"]


def test_existing_file_without_state_is_adopted(tmp_path):
    """Tasks found in --out (e.g. Alpaca's own output) are kept, join the novelty pool, and are not redone."""
    out = tmp_path / "adopt.jsonl"
    recs = [{"instruction": e.messages[-2]["content"], "input": e.messages[-2].get("input", ""),
             "output": e.messages[-1]["content"]} for e in load_examples(ALPACA_TINY, "alpaca")[:3]]
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    logs: list[str] = []
    teacher = LocalTeacher("tiny", batch_size=2)
    st = generate_self_instruct(GenerationSettings(n=3, request_batch_size=2, max_tokens=8), teacher, out,
                                progress=False, log=logs.append)
    assert st.kept == st.adopted == 3 and st.requests == 0 and "3 tasks kept" in logs[0]
    generate_self_instruct(GenerationSettings(n=4, request_batch_size=2, max_tokens=8, max_requests=2), teacher, out,
                           progress=False)
    assert _check_state(out, 2)["adopted"] == 3
    assert [json.loads(x) for x in out.read_text().splitlines()[:3]] == recs


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_teacher_writes_tasks_that_pass_the_filters(tmp_path):
    """A real instruction-tuned teacher (greedy, so the outcome does not rest on sampling): tasks are kept, written
    in Alpaca format, and a restart reloads them into the novelty pool."""
    from herd.engine.generation import generate_ids

    teacher = LocalTeacher("smollm2", batch_size=2, generate_ids=generate_ids)  # as derive runs it
    out = tmp_path / "smollm2.jsonl"
    cfg = dict(n=50, request_batch_size=2, max_tokens=160, temperature=0.0)
    st = generate_self_instruct(GenerationSettings(**cfg, max_requests=2), teacher, out, progress=False)
    _check_state(out, 2)
    assert st.items >= 1 and st.kept >= 1
    logs: list[str] = []
    generate_self_instruct(GenerationSettings(**cfg, max_requests=4), teacher, out, progress=False, log=logs.append)
    _check_state(out, 4)
    assert f"{st.kept} tasks kept" in logs[0]


def test_cli_generate_with_tiny_teacher(tmp_path):
    out = tmp_path / "cli.jsonl"
    args = [sys.executable, "-m", "herd.cli", "generate", "self-instruct", "--teacher", "tiny", "--n", "3",
            "--out", str(out), "--max-requests", "2", "--batch-size", "2", "--max-tokens", "16", "--no-progress"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "requests 2" in r.stdout and "rejected" in r.stdout
    _check_state(out, 2)


# ---------------------------------------------------------------- an OpenAI-compatible endpoint

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_url(tmp_path_factory):
    """``herd serve`` (the real CLI, uvicorn) on the tiny base, saved as an artifact, on a free port."""
    from herd.artifacts import new_lineage, save_model_folder, template_record, write_lineage
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.templates import get_template

    folder = tmp_path_factory.mktemp("teacher") / "tiny-teacher"
    ref = resolve_base("tiny")
    tok, tmpl = load_tokenizer(ref), get_template("chatml")
    save_model_folder(load_model(ref), tok, tmpl, folder)
    write_lineage(folder, new_lineage("tiny-teacher", parent=ref.describe(), template=template_record(tmpl, tok)))
    port = _free_port()
    env = {**os.environ, "HERD_API_KEY": "sk-test"}
    proc = subprocess.Popen([sys.executable, "-m", "herd.cli", "serve", str(folder), "--port", str(port),
                             "--ctx", "2048", "--max-tokens-limit", "40", "--threads", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline, "herd serve did not start"
            time.sleep(0.3)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_openai_endpoint_teacher_runs_and_resumes(served_url, tmp_path, api):
    teacher = OpenAITeacher(served_url, api_key="sk-test", api=api, concurrency=2)
    assert teacher.model == "tiny-teacher"  # the first model the server lists
    out = tmp_path / f"{api}.jsonl"
    # 64 tokens is above the server's limit (40): the request shrinks max_tokens and is retried, as Alpaca did
    cfg = dict(n=10, request_batch_size=2, max_tokens=64)
    generate_self_instruct(GenerationSettings(**cfg, max_requests=2), teacher, out, progress=False)
    _check_state(out, 2)
    generate_self_instruct(GenerationSettings(**cfg, max_requests=4), teacher, out, progress=False)
    st = _check_state(out, 4)
    assert sum(st["rejected"].values()) >= 4


def test_openai_teacher_retries_then_names_the_failure():
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens here
    t0 = time.monotonic()
    with pytest.raises(HerdError, match="after 3 attempts"):
        OpenAITeacher(url, api_key="k", model=None, retries=2, backoff=0.2)
    assert time.monotonic() - t0 >= 0.2 * 0.75 + 0.4 * 0.75  # two backoff sleeps


def test_rate_limit_spaces_requests():
    lim = RateLimiter(per_minute=600)  # one every 0.1 s
    t0 = time.monotonic()
    for _ in range(6):
        lim.wait()
    assert time.monotonic() - t0 >= 0.5


# ---------------------------------------------------------------- the recipe

def test_selfinstruct_recipe_generates_then_trains():
    from herd.core.recipe import load_recipe

    rec = load_recipe(str(ROOT / "recipes" / "alpaca-selfinstruct.yaml"), "tiny")
    assert [b["kind"] for b in rec.builds] == ["self_instruct"] and rec.builds[0]["teacher"] is None
    full = load_recipe(str(ROOT / "recipes" / "alpaca-selfinstruct.yaml"), "full")
    assert full.builds[0]["n"] == 52002 and rec.builds[0]["n"] < 100
    assert rec.stages[0].kind == "sft" and rec.template == "alpaca"
    assert default_prompt_file().is_file()
