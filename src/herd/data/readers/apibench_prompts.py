"""Gorilla's user turn, with and without retrieved API documentation (recipes.md §8.3).

The released question files fix the exact strings, so training renders the same bytes the evaluation
feeds the model (dossier §10.4: keep the train/test retrieval contract):
- a question is ``" " + instruction + "\\n"``: a leading space, the instruction with JSON escapes
  (quotes and newlines as ``\\"`` and ``\\n``), and a LITERAL backslash-n at the end, exactly as
  ``questions_*_0_shot.jsonl`` hold it (185 of the 186 TorchHub questions rebuild byte for byte from
  ``torchhub_eval.json``; the other differs by one blank line inside its instruction);
- retriever-aware: ``question + " \\n Use this API documentation for reference:  " + doc`` (a real
  newline, two spaces before the document), i.e. the dossier's
  ``"{instruction}\\n \\n Use this API documentation for reference:  {api_json}"``; ``doc`` is the API
  entry as JSON, the layout of the released ``*_oracle.jsonl`` files.
"""

from __future__ import annotations

import json

RAT_HEADER = "Use this API documentation for reference:"
RAT_JOIN = " \n " + RAT_HEADER + "  "


def question_text(instruction: str) -> str:
    """The 0-shot question string of Gorilla's question files."""
    return " " + json.dumps(instruction)[1:-1] + "\\n"


def doc_text(entry: dict) -> str:
    """One API documentation entry as it is appended to a prompt."""
    return json.dumps(entry)


def user_prompt(question: str, docs: list[dict]) -> str:
    """The user turn: the bare question (0-shot) or the question + documentation (retriever-aware).
    Several documents (top-k > 1) are appended one per line."""
    if not docs:
        return question
    return question + RAT_JOIN + "\n".join(doc_text(d) for d in docs)
