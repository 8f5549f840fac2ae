"""GGUF / Ollama / HF export of a herd artifact, checked by llama.cpp itself where it is installed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal

import numpy as np
import pytest
import torch

from herd.artifacts import read_lineage
from herd.base import load_model, load_tokenizer, smollm2_gguf_path
from herd.core.native import NativeCrash, probe_llamacpp, run_isolated
from herd.export import export_gguf, export_hf, read_gguf_lineage, write_modelfile
from herd.export.ollama import blocks
from herd.templates import get_template
from tests.artifact_helpers import make_tiny_artifact

# Five prompts: chat turns with special tokens, digits, code, non-Latin scripts and emoji, FIM sentinels.
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Add 1234 and 56789, then ×2."}],
    [{"role": "user", "content": "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n\t# tabs  and  spaces"}],
    [{"role": "user", "content": "Grüße, 世界! Привет 🦙🦙 — naïve café 'quoted' \"double\""}],
    [{"role": "user", "content": "<PRE> def add(a, b): <SUF>\n    return c <MID>"}],
]
FIM_TOKENS = ["<PRE>", "<SUF>", "<MID>", "<EOT>"]  # added by a Code-Llama-style recipe


def make_artifact(folder, *, template: str = "chatml", extra_tokens: list[str] | None = None):
    return make_tiny_artifact(folder, f"tiny-{template}", template=template, extra_tokens=extra_tokens,
                              recipe={"name": "test", "profile": "tiny"})


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("art") / "tiny-chatml", extra_tokens=FIM_TOKENS)


@pytest.fixture(scope="module")
def gguf_f32(artifact):
    return export_gguf(artifact, artifact / "export" / "tiny.f32.gguf", "f32")


def _fields(path) -> dict:
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")}


def test_gguf_carries_tokenizer_template_and_lineage(artifact, gguf_f32):
    meta, lineage, tok = _fields(gguf_f32), read_lineage(artifact), load_tokenizer(artifact)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert len(meta["tokenizer.ggml.tokens"]) == len(tok) == 49152 + len(FIM_TOKENS)
    assert meta["tokenizer.ggml.tokens"][-4:] == FIM_TOKENS
    assert set(meta["tokenizer.ggml.token_type"][-4:]) == {3}  # CONTROL: matched whole, like transformers
    assert meta["tokenizer.ggml.fim_pre_token_id"] == tok.convert_tokens_to_ids("<PRE>")
    assert meta["tokenizer.chat_template"] == get_template("chatml").plain_jinja(tok)
    assert "{% generation" not in meta["tokenizer.chat_template"]
    assert meta["general.base_model.0.name"] == "tiny"
    assert json.loads(meta["herd.recipe"])["name"] == "test"
    assert meta["herd.source_weights_sha256"] == lineage["weights_sha256"]
    assert read_gguf_lineage(gguf_f32)["id"] == lineage["id"]


def test_tokenizer_metadata_mirrors_smollm2_original_gguf(tmp_path):
    """Our tokenizer keys for SmolLM2's tokenizer equal those of the GGUF HuggingFace published."""
    ours = _fields(export_gguf(make_artifact(tmp_path / "a"), tmp_path / "t.gguf", "f16"))
    theirs = _fields(smollm2_gguf_path())
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token"):
        assert ours[key] == theirs[key], key


def test_gguf_f32_reloads_with_identical_logits(artifact, gguf_f32):
    from transformers import LlamaForCausalLM

    tok = load_tokenizer(artifact)
    ids = torch.tensor([tok.encode("Hello <PRE> world 123")])
    back = LlamaForCausalLM.from_pretrained(str(gguf_f32.parent), gguf_file=gguf_f32.name, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, load_model(artifact)(ids).logits)


needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                    reason="llama-cpp-python not built (make setup-llamacpp)")


# llama.cpp runs only in child processes (herd.core.native.run_isolated): a build this CPU cannot run dies
# there with SIGILL, which fails one test with the cause named instead of killing the whole session.
def _greedy_llamacpp(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    out = []
    for _ in range(n):
        llm.eval(ids if not out else out[-1:])
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    return out


def _llamacpp_tokenize_and_continue(path: str, cases: list[tuple[str, list[int]]], n: int) -> list[dict]:
    """In the child: llama.cpp's tokenization of each text and its greedy continuation of given ids."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    return [{"ids": llm.tokenize(text.encode(), add_bos=False, special=True),
             "ids_bos": llm.tokenize(text.encode(), special=True),
             "greedy": _greedy_llamacpp(llm, ids, n)} for text, ids in cases]


def _llamacpp_complete(path: str, prompt: str, max_tokens: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False)
    return {"pid": os.getpid(), "usage": llm.create_completion(prompt, max_tokens=max_tokens, temperature=0)["usage"]}


def _llamacpp_load_then_crash(path: str) -> None:
    """In the child: load the GGUF, then die the way an AVX-512 build dies on an AVX2-only CPU."""
    import llama_cpp

    llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=1, verbose=False)
    os.kill(os.getpid(), signal.SIGILL)


@needs_llamacpp
def test_llamacpp_tokenizes_and_continues_like_transformers(artifact, gguf_f32):
    tok, template, model = load_tokenizer(artifact), get_template("chatml"), load_model(artifact)
    texts = [template.prompt(messages, tok) for messages in PROMPTS]
    cases = [(text, tok.encode(text, add_special_tokens=False)) for text in texts]
    got = run_isolated(_llamacpp_tokenize_and_continue, str(gguf_f32), cases, 32, what="llama.cpp", timeout=600)
    for (text, ids), cpp in zip(cases, got):
        assert cpp["ids"] == ids, text
        assert cpp["ids_bos"] == tok.encode(text), "BOS convention differs"
        with torch.no_grad():
            want = model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                  eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        assert cpp["greedy"] == want, text


@needs_llamacpp
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_smaller_gguf_dtypes_run_in_llamacpp(artifact, dtype):
    path = export_gguf(artifact, artifact / "export" / f"tiny.{dtype}.gguf", dtype)
    assert _fields(path)["general.file_type"] == {"f16": 1, "q8_0": 7}[dtype]
    out = run_isolated(_llamacpp_complete, str(path), "Hello", 8, what="llama.cpp", timeout=300)
    assert out["usage"]["completion_tokens"] >= 1
    assert out["pid"] != os.getpid()


@needs_llamacpp
def test_llamacpp_crash_in_its_child_is_a_failure_naming_the_cause(gguf_f32):
    """The probe every llama.cpp load goes through runs in another process; when that process dies by a
    signal (here SIGILL right after a real load), the caller gets an error naming it and the fix."""
    probe = probe_llamacpp(gguf_f32, threads=1)
    assert len(probe["tokens"]) == 2 and probe["n_vocab"] == 49152 + len(FIM_TOKENS)
    with pytest.raises(NativeCrash) as e:
        run_isolated(_llamacpp_load_then_crash, str(gguf_f32), what="llama.cpp loading tiny.f32.gguf", timeout=300)
    assert e.value.signum == signal.SIGILL
    msg = str(e.value)
    assert "llama.cpp loading tiny.f32.gguf crashed the process with SIGILL (Illegal instruction)" in msg
    assert "make setup-llamacpp" in msg and "herd doctor" in msg


def _go_render(go: str, messages: list[dict]) -> str:
    """A minimal interpreter for the Go template herd writes (enough to check it, not Ollama itself)."""
    head = ""
    m = re.match(r'\{\{ if ne \(index \.Messages 0\)\.Role "system" \}\}(.*?)\{\{ end \}\}', go, re.S)
    if m:
        head, go = m.group(1), go[m.end():]
    body, gen = re.match(r"\{\{ range \.Messages \}\}(.*)\{\{ end \}\}\{\{ end \}\}(.*)", go, re.S).groups()
    branches = dict((r, (p, s)) for r, p, s in
                    re.findall(r'\{\{ (?:else )?if eq \.Role "(\w+)" \}\}(.*?)\{\{ \.Content \}\}(.*?)(?=\{\{ else|$)',
                               body, re.S))
    out = head if messages[0]["role"] != "system" else ""
    for msg in messages:
        pre, suf = branches[msg["role"]]
        out += pre + msg["content"] + suf
    return out + gen


@pytest.mark.parametrize("template", ["chatml", "alpaca", "vicuna_v1.1"])
def test_ollama_modelfile_template_renders_like_the_artifact_template(tmp_path, template):
    try:
        get_template(template)
    except Exception:
        pytest.skip(f"template {template} not registered")
    art = make_artifact(tmp_path / template, template=template)
    path = write_modelfile(art, art / "export" / "m.gguf")
    text = path.read_text()
    assert "FROM ./m.gguf" in text
    go = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    tok, t = load_tokenizer(art), get_template(template)
    for stop in t.stop_strings(tok):
        assert f'PARAMETER stop "{stop}"' in text
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how are you?"}]
    if "system" in t.roles:
        assert _go_render(go, [{"role": "system", "content": "S"}] + msgs) == \
            t.prompt([{"role": "system", "content": "S"}] + msgs, tok)
    assert _go_render(go, msgs) == t.prompt(msgs, tok)
    assert blocks(t, tok).render(msgs) == t.prompt(msgs, tok)


def test_hf_export_loads_in_plain_transformers(artifact, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = export_hf(artifact, tmp_path / "hf", "bf16")
    tok = AutoTokenizer.from_pretrained(out)
    messages = PROMPTS[1]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
        get_template("chatml").prompt(messages, load_tokenizer(artifact))
    assert "{% generation" not in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.architectures == ["LlamaForCausalLM"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in np.atleast_1d(GenerationConfig.from_pretrained(out).eos_token_id)
    assert json.loads((out / "lineage.json").read_text())["id"] == read_lineage(artifact)["id"]
    assert (out / "README.md").is_file()


def test_cli_export_writes_gguf_and_modelfile(artifact, capsys):
    from herd.cli import main

    assert main(["export", str(artifact), "--to", "gguf", "--dtype", "f16"]) == 0
    printed = capsys.readouterr().out
    assert "tiny-chatml.f16.gguf" in printed and (artifact / "export" / "Modelfile").is_file()


def test_export_refuses_weights_changed_since_lineage(tmp_path):
    from herd.core.errors import HerdError

    art = make_artifact(tmp_path / "a")
    with open(art / "model.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(HerdError, match="weights changed"):
        export_gguf(art, tmp_path / "x.gguf", "f32")
