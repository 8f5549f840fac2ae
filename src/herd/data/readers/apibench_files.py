"""Gorilla (recipes.md §8): APIBench data, BM25/oracle retrieval, retriever-aware prompts and the
AST sub-tree matching evaluation, for the three hubs (TorchHub, TensorFlow Hub, HuggingFace).

Where each hub's files sit inside the shared ``gorilla_apibench`` dataset (PROVENANCE.md there)."""

from __future__ import annotations

from dataclasses import dataclass

HUBS = ("torchhub", "tensorflowhub", "huggingface")


@dataclass(frozen=True)
class HubFiles:
    api: str  # the API database (one documentation entry per line)
    eval: str  # APIBench held-out records; line i holds the reference API of question_id i
    questions: str  # the released 0-shot question file
    train: str | None = None  # only TorchHub's train split is in the shared snapshot


HUB_FILES = {
    "torchhub": HubFiles("api/torchhub_api.jsonl", "apibench/torchhub_eval.json",
                         "eval-questions/questions_torchhub_0_shot.jsonl", "apibench/torchhub_train.json"),
    "tensorflowhub": HubFiles("api/tensorflowhub_api.jsonl", "apibench/tensorflow_eval.json",
                              "eval-questions/questions_tensorflowhub_0_shot.jsonl"),
    "huggingface": HubFiles("api/huggingface_api.jsonl", "apibench/huggingface_eval.json",
                            "eval-questions/questions_huggingface_0_shot.jsonl"),
}
PUBLISHED_RESPONSES = "eval-responses/response_torchhub_Gorilla_FT_0_shot.jsonl"
