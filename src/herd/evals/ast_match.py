"""AST sub-tree matching: how Gorilla scores a generated API call (recipes.md §8.4).

The protocol, as the released scripts define it (eval-scripts/ast_eval_{th,tf,hf}.py, described in the
shared dataset's PROVENANCE.md and re-written here from that description):

1. Cut the call out of the response: the text between the first ``api_call`` and the next
   ``api_provider``, from two characters after its first ``:`` to its last ``)``. TorchHub counts a
   response without ``api_call`` as wrong; TF Hub and HuggingFace score the whole text instead.
2. Parse it with tree-sitter. The parser is error-tolerant, which matters: the cut keeps the opening
   quote of the answer's string (``'model = torch.hub.load('…`` or ``\\"model = …``), and whether the
   call survives that quote decides many verdicts.
3. An API of the database matches when a sub-tree of the candidate whose first child reads exactly as the
   API's function (``torch.hub.load``) contains every key argument value of the API as text. Key values
   per hub: TorchHub the arguments mentioning ``repo_or_dir`` or ``model``; TF Hub the ``model=`` value and
   every other argument as written; HuggingFace keyword values and positional arguments. The first match
   in database order wins.
4. No match: hallucination. A match whose ``domain`` equals the reference API's: correct. Otherwise
   error (a real API, the wrong one). Rates are over all responses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from herd.core.progress import Progress
from herd.data.readers.apibench_files import HUBS

_PUNCT = ("(", ")", ",")


@lru_cache(maxsize=1)
def _parser():
    import tree_sitter_python
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_python.language()))


def parse(code: str):
    """The tree-sitter root node of ``code`` (never raises: syntax errors become ERROR nodes)."""
    return _parser().parse(code.encode("utf-8")).root_node


def subtrees(root) -> list[tuple[bytes | None, object]]:
    """Every node that has children (and the root), keyed by the text of its first child, in the order
    Gorilla enumerates them (depth first, last child first): the order decides which of two sub-trees
    with the same function name is compared."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append((node.children[0].text if node.child_count else None, node))
        stack.extend(c for c in node.children if c.child_count)
    return out


def extract_api_call(text: str, hub: str) -> str | None:
    """The candidate call of a response (step 1 above); ``None`` when TorchHub finds no ``api_call``."""
    parts = text.split("api_call")
    if len(parts) == 1:
        return None if hub == "torchhub" else text
    seg = parts[1].split("api_provider")[0]
    start = seg.find(":")
    start = 0 if start < 0 else start
    end = seg.rfind(")")
    end = -2 if end < 0 else end  # as released: no ")" drops the last character
    return seg[start + 2:end + 1]


def _value(arg) -> str:
    """The third child of an argument (the value of ``name=value``; for a string, its closing quote)."""
    return (arg.children[2] if arg.child_count > 2 else arg).text.decode("utf-8", "replace")


def key_values(args_node, hub: str) -> list[str]:
    """The argument values a candidate must contain to match this API (quotes ``'`` stripped)."""
    out = []
    for arg in args_node.children:
        text = arg.text.decode("utf-8", "replace")
        if hub == "torchhub":
            if "repo_or_dir" in text or "model" in text:
                out.append(_value(arg))
        elif hub == "tensorflowhub":
            if "model=" in text or "model =" in text:
                out.append(_value(arg))
            elif text not in _PUNCT:
                out.append(text)
        elif "=" in text:  # huggingface
            out.append(_value(arg))
        elif text not in _PUNCT:
            out.append(text)
    return [v.strip("'") for v in out]


@dataclass(frozen=True)
class Signature:
    """One database API as the matcher sees it: its function text and its key argument values."""

    index: int
    name: bytes
    values: tuple[str, ...]


def signature(api_call: str, hub: str, index: int) -> Signature | None:
    """``None`` for entries that can never match (no call shape, or no key argument)."""
    root = parse(api_call)
    if not root.child_count or not root.children[0].child_count:
        return None
    expr = root.children[0].children[0]  # the first statement's expression: normally the call
    if expr.child_count < 2:
        return None
    values = tuple(key_values(expr.children[1], hub))
    return Signature(index, expr.children[0].text, values) if values else None


class ApiMatcher:
    """Matches candidate calls against one hub's API database."""

    def __init__(self, entries: list[dict], hub: str):
        if hub not in HUBS:
            raise ValueError(f"unknown hub '{hub}' (known: {', '.join(HUBS)})")
        self.entries, self.hub = entries, hub
        self.signatures = [s for i, e in enumerate(entries) if (s := signature(e["api_call"], hub, i))]

    def match(self, call: str) -> int | None:
        """Index of the first database API whose sub-tree matches ``call``, else ``None``."""
        first: dict[bytes, object] = {}
        for key, node in subtrees(parse(call)):
            if key is not None and key not in first:
                first[key] = node
        for sig in self.signatures:
            node = first.get(sig.name)
            if node is None:
                continue
            text = node.text.decode("utf-8", "replace")
            if all(v in text for v in sig.values):
                return sig.index
        return None


@dataclass
class Verdict:
    question_id: int
    status: str  # correct | hallucination | wrong_api | no_api_call
    call: str | None
    matched: int | None = None  # database index of the matched API


@dataclass
class AstScore:
    """Counts over ``n`` responses; accuracy + hallucination + error = 1 (error = everything else)."""

    n: int = 0
    correct: int = 0
    hallucination: int = 0
    wrong_api: int = 0
    no_api_call: int = 0
    verdicts: list[Verdict] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def hallucination_rate(self) -> float:
        return self.hallucination / self.n if self.n else 0.0

    @property
    def error_rate(self) -> float:
        return (self.n - self.correct - self.hallucination) / self.n if self.n else 0.0

    def summary(self) -> dict:
        return {"n": self.n, "correct": self.correct, "hallucination": self.hallucination,
                "wrong_api": self.wrong_api, "no_api_call": self.no_api_call,
                "accuracy": round(self.accuracy, 4), "hallucination_rate": round(self.hallucination_rate, 4),
                "error_rate": round(self.error_rate, 4)}

    def verdict_rows(self) -> list[dict]:
        return [asdict(v) for v in self.verdicts]


def judge(text: str, reference_domain: str, matcher: ApiMatcher, question_id: int = 0) -> Verdict:
    """One response's verdict against its reference API's domain."""
    call = extract_api_call(text, matcher.hub)
    if call is None:
        return Verdict(question_id, "no_api_call", None)
    idx = matcher.match(call)
    if idx is None:
        return Verdict(question_id, "hallucination", call)
    status = "correct" if matcher.entries[idx]["domain"] == reference_domain else "wrong_api"
    return Verdict(question_id, status, call, idx)


def score(responses: Iterable[tuple[int, str]], reference_domains: dict[int, str], matcher: ApiMatcher, *,
          progress: bool = False) -> AstScore:
    """Score ``(question_id, text)`` pairs; ``reference_domains[question_id]`` is the reference domain;
    ``progress`` reports responses scored."""
    out = AstScore()
    for qid, text in Progress(responses, desc="apibench score", unit="response", enabled=progress):
        v = judge(text, reference_domains[qid], matcher, qid)
        out.n += 1
        out.verdicts.append(v)
        if v.status == "correct":
            out.correct += 1
        elif v.status == "hallucination":
            out.hallucination += 1
        elif v.status == "wrong_api":
            out.wrong_api += 1
        else:
            out.no_api_call += 1
    return out
