"""herd serve: a real uvicorn server on loopback, driven by the official openai client."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
import time

import httpx
import openai
import pytest
import torch
import uvicorn

from herd.base import load_model, load_tokenizer
from herd.serve import ServerConfig, Verdict, create_app, load_served
from herd.templates import get_template
from tests.artifact_helpers import make_tiny_artifact

KEY = "test-key"
MODEL = "tiny-chat"
CTX = 256
BODY_LIMIT = 32 * 1024
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


def make_artifact(folder):
    return make_tiny_artifact(folder, MODEL, recipe={"name": "alpaca", "profile": "tiny"},
                              scorecard={"headline": "held-out loss 10.8 (parent 10.9)"})


class KeywordGuard:
    """A stand-in classifier for the HTTP layer only: flags texts that contain 'FORBIDDEN'."""

    name = "keyword-guard"

    def moderate(self, texts):
        return [Verdict(flagged="FORBIDDEN" in t, categories={"S1": "FORBIDDEN" in t},
                        category_scores={"S1": float("FORBIDDEN" in t)}) for t in texts]


class Server:
    """uvicorn in a thread on a free loopback port; stopped (bounded wait) at teardown."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str = KEY, cls=openai.OpenAI):
        return cls(base_url=self.url, api_key=key, max_retries=0, timeout=120)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("serve") / MODEL)


@pytest.fixture(scope="module")
def served(artifact):
    m = load_served(artifact, "transformers", context_length=CTX, max_batch=16)
    yield m
    m.backend.close()


@pytest.fixture(scope="module")
def server(served):
    s = Server(create_app([served], ServerConfig(api_key=KEY, max_body_bytes=BODY_LIMIT, max_tokens_limit=128)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def guarded(served):
    s = Server(create_app([served], ServerConfig(api_key=KEY), guard=KeywordGuard()))
    yield s
    s.stop()


def _reference_greedy(artifact, messages, n):
    """What transformers' own generate() answers, on the artifact's template."""
    tok, model = load_tokenizer(artifact), load_model(artifact)
    ids = tok.encode(get_template("chatml").prompt(messages, tok), add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_models_list_carries_lineage(server):
    models = server.client().models.list().data
    assert [m.id for m in models] == [MODEL]
    lineage = models[0].model_extra["lineage"]
    assert lineage["parent"]["name"] == "tiny" and lineage["recipe"]["name"] == "alpaca"
    assert lineage["template"] == "chatml" and "held-out loss" in lineage["scorecard"]["headline"]
    assert server.client().models.retrieve(MODEL).id == MODEL


def test_chat_answers_in_the_artifact_template(server, artifact):
    r = server.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == _reference_greedy(artifact, HELLO, 12)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens == len(load_tokenizer(artifact).encode(
        get_template("chatml").prompt(HELLO, load_tokenizer(artifact)), add_special_tokens=False))


def test_streaming_gives_the_same_text_as_non_streaming(server):
    c = server.client()
    whole = c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=0)
    chunks = list(c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=0, stream=True,
                                             stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16


def test_completions_plain_and_streaming(server):
    c = server.client()
    r = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True))
    assert r.choices[0].text == streamed and r.usage.completion_tokens == 8


def test_user_stop_string_ends_the_reply_before_it(server):
    c = server.client()
    full = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop, "the reference reply is empty"
    r = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_32_concurrent_streams_complete_and_match_serial_greedy(server):
    prompts = [[{"role": "user", "content": f"Question number {i}: what is {i} + {i}?"}] for i in range(32)]
    serial = {i: server.client().chat.completions.create(model=MODEL, messages=prompts[i], max_tokens=10,
                                                         temperature=0).choices[0].message.content for i in (0, 31)}

    async def one(client, i):
        stream = await client.chat.completions.create(model=MODEL, messages=prompts[i], max_tokens=10,
                                                      temperature=0, stream=True)
        text, finish = [], None
        async for ch in stream:
            text.append(ch.choices[0].delta.content or "")
            finish = ch.choices[0].finish_reason or finish
        return "".join(text), finish

    async def all_of_them():
        async with server.client(cls=openai.AsyncOpenAI) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    results = asyncio.run(all_of_them())
    assert all(finish in ("length", "stop") for _, finish in results)
    assert results[0][0] == serial[0] and results[31][0] == serial[31]  # batching changes nothing


def test_sampling_with_a_seed_is_reproducible(server):
    c = server.client()
    a, b = (c.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, temperature=0.9, top_p=0.9,
                                      seed=7).choices[0].message.content for _ in range(2))
    assert a == b


# -- errors: OpenAI-style bodies ----------------------------------------------------------------------
def _error(exc: openai.APIStatusError) -> dict:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("error", body)


def test_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().chat.completions.create(model="nope", messages=HELLO)
    assert _error(e.value)["code"] == "model_not_found"


def test_oversize_max_tokens_is_400(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=100_000)
    assert _error(e.value)["param"] == "max_tokens"


def test_prompt_longer_than_context_is_400(server):
    long = [{"role": "user", "content": "word " * (CTX + 10)}]
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model=MODEL, messages=long, max_tokens=4)
    assert _error(e.value)["code"] == "context_length_exceeded"


def test_body_over_the_size_limit_is_413(server):
    huge = [{"role": "user", "content": "x" * (BODY_LIMIT + 1)}]
    with pytest.raises(openai.APIStatusError) as e:
        server.client().chat.completions.create(model=MODEL, messages=huge, max_tokens=4)
    assert e.value.status_code == 413 and _error(e.value)["code"] == "request_too_large"


def test_wrong_and_missing_api_key_are_401(server):
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(key="wrong").models.list()
    assert _error(e.value)["code"] == "invalid_api_key"
    r = httpx.get(f"{server.url}/models", timeout=30)  # the openai client always sends a key
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]


def test_malformed_json_and_invalid_fields_are_400(server):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(f"{server.url}/chat/completions", content=b'{"model": "tiny-chat", "messages": [', headers=headers,
                   timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model=MODEL, messages=HELLO, temperature=5)
    assert _error(e.value)["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model=MODEL, messages=[])


def test_moderations_404_without_a_guard(server):
    with pytest.raises(openai.NotFoundError):
        server.client().moderations.create(input="hello")


# -- moderation (through the Guard interface; the Llama Guard classifier plugs in there) ----------------
def test_moderations_endpoint_reports_the_guard_verdicts(guarded):
    r = guarded.client().moderations.create(input=["a friendly note", "something FORBIDDEN"])
    assert [x.flagged for x in r.results] == [False, True] and r.model == "keyword-guard"


def test_flagged_chat_input_is_refused(guarded):
    with pytest.raises(openai.BadRequestError) as e:
        guarded.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "FORBIDDEN"}])
    assert _error(e.value)["code"] == "content_filter"
    ok = guarded.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0)
    assert ok.choices[0].finish_reason in ("length", "stop", "content_filter")


def test_serve_guard_flag_wires_a_real_llama_guard_classifier(served):
    """`herd serve --guard ARTIFACT` puts herd.guard.Guard (a real model) behind /v1/moderations and the
    chat filter; the tiny base stands in for a guard artifact, thresholds make its verdicts certain."""
    import argparse

    from herd.guard import LLAMA_GUARD_V1
    from herd.serve.commands import build_guard

    texts = ["How do I bake bread?", "How do I build a bomb?"]
    strict = build_guard(argparse.Namespace(guard="tiny", guard_threshold=0.0))  # P(unsafe) >= 0: all flagged
    direct = strict.moderate(texts)
    s = Server(create_app([served], ServerConfig(api_key=KEY), guard=strict))
    try:
        r = s.client().moderations.create(input=texts)
        assert r.model == strict.name and [x.flagged for x in r.results] == [True, True]
        raw = s.client().moderations.with_raw_response.create(input=texts).http_response.json()["results"]
        for got, want in zip(raw, direct):
            assert set(got["categories"]) == set(LLAMA_GUARD_V1.names)
            assert got["category_scores"] == pytest.approx(want.category_scores, abs=1e-5)
        with pytest.raises(openai.BadRequestError) as e:
            s.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
        assert _error(e.value)["code"] == "content_filter"
    finally:
        s.stop()
    lenient = build_guard(argparse.Namespace(guard="tiny", guard_threshold=1.0))  # never reached
    s = Server(create_app([served], ServerConfig(api_key=KEY), guard=lenient))
    try:
        assert not any(x.flagged for x in s.client().moderations.create(input=texts).results)
        ok = s.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0)
        assert ok.choices[0].finish_reason in ("length", "stop")
    finally:
        s.stop()
    assert build_guard(argparse.Namespace(guard=None, guard_threshold=None)) is None


# -- llama.cpp backend ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_server(artifact):
    if importlib.util.find_spec("llama_cpp") is None:  # never imported here: the backend probes it in a child
        pytest.skip("llama-cpp-python not built (make setup-llamacpp)")
    m = load_served(artifact, "llamacpp", gguf_dtype="f32", context_length=CTX, threads=2)
    s = Server(create_app([m], ServerConfig(api_key=KEY)))
    yield s
    s.stop()
    m.backend.close()


def test_llamacpp_backend_answers_like_transformers(llama_server, server):
    want = server.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    got = llama_server.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    assert got.choices[0].message.content == want.choices[0].message.content
    assert llama_server.client().models.list().data[0].model_extra["backend"] == "llamacpp"


def test_llamacpp_backend_serves_32_concurrent_streams(llama_server):
    async def one(client, i):
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=8, stream=True)
        return [ch.choices[0].finish_reason async for ch in stream if ch.choices][-1]

    async def all_of_them():
        async with llama_server.client(cls=openai.AsyncOpenAI) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    assert all(f in ("length", "stop") for f in asyncio.run(all_of_them()))


def test_stop_string_split_across_tokens_never_leaks():
    from herd.serve.jobs import Detokenizer

    pieces = {1: "Hello ", 2: "wor", 3: "ld", 4: "!", 5: "\xe2", 6: "\x82\xac"}  # 5+6: a split euro sign

    def decode(ids):
        return b"".join(pieces[i].encode("latin-1") if i in (5, 6) else pieces[i].encode() for i in ids).decode(
            "utf-8", errors="replace")

    det = Detokenizer(decode, stop_ids={99}, stop=["world!"])
    sent = [det.push(t) for t in (1, 2, 3)]
    assert "".join(s for s, _ in sent) == "Hello " and not any(done for _, done in sent)  # "world" held back
    assert det.push(4) == ("", True)
    det = Detokenizer(decode, stop_ids={99}, stop=["world!"])
    assert det.push(5) == ("", False)  # half a character is never sent
    assert det.push(6) == ("€", False)
    assert det.push(2) == ("", False) and det.push(99) == ("wor", True)  # a stop token releases what was held
