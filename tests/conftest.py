"""Shared fixtures: the real SmolLM2 tokenizer and the tiny random Llama built on it."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HERD_NO_CACHE", "1")  # the tokenized-data cache stays out of ~/.cache (its tests use tmp)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALPACA_DEMO = SHARED / "llamafactory_alpaca_en_demo" / "alpaca_en_demo.json"
ALPACA_TINY = SHARED / "stanford_alpaca_tiny" / "alpaca_tiny.json"


@pytest.fixture(scope="session")
def tokenizer():
    from herd.base import load_tokenizer, smollm2_tokenizer_dir

    return load_tokenizer(smollm2_tokenizer_dir())


@pytest.fixture(scope="session")
def tiny_ref():
    from herd.base import resolve_base

    return resolve_base("tiny")


@pytest.fixture()
def tiny_model(tiny_ref):
    from herd.base import load_model

    return load_model(tiny_ref)


@pytest.fixture(scope="session")
def alpaca_examples():
    from herd.data import load_examples

    return load_examples(ALPACA_TINY, "alpaca")
