"""HumanEval, HumanEval infilling and MBPP as their harnesses define them (dossier §3.7).

- Programs are built exactly like openai/human-eval (``prompt + completion + "\\n" + test + "\\n" +
  f"check({entry_point})"``) and openai/human-eval-infilling (``prompt + middle + suffix + ...``);
  a sample passes when its program runs to the end in :mod:`herd.engine.sandbox`.
- pass@k is the unbiased estimator of Chen et al. 2021, in human-eval's numerically stable form.
- Generation decodes the new tokens of each row with a leading anchor, so SentencePiece does not eat
  the first space of a completion (HumanEval completions start with indentation), and never strips.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from pathlib import Path

from herd.templates.base import truncate

HUMANEVAL = "shared:humaneval/HumanEval.jsonl.gz"
HUMANEVAL_INFILLING = "shared:humaneval_infilling/HumanEval-SingleLineInfilling.jsonl.gz"
MBPP = "shared:mbpp/mbpp.jsonl"

# Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (arXiv:2107.03374), §3: Codex is
# sampled "until we encounter one of the following stop sequences: '\nclass', '\ndef', '\n#', '\nif', or
# '\nprint', since the model will continue generating additional functions or statements otherwise".
# bigcode-evaluation-harness (tasks/humaneval.py) uses the same five plus a few of its own.
STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")

# MBPP (Austin et al. 2021): few-shot prompts use task_ids 2, 3, 4; task_ids 11-510 are the test split
# (shared/data/mbpp/PROVENANCE.md, from the upstream README).
MBPP_SHOTS = (2, 3, 4)
MBPP_TEST_IDS = (11, 510)
MBPP_STOP = ("[DONE]",)


# ---- data -------------------------------------------------------------------------------------------

def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_humaneval(path: str | Path) -> list[dict]:
    """HumanEval problems: task_id, prompt, canonical_solution, test, entry_point."""
    return read_jsonl(path)


def load_infilling(path: str | Path) -> list[dict]:
    """HumanEval infilling tasks: prompt (before the gap), suffix, canonical_solution (the gap), test."""
    return read_jsonl(path)


def task_problem(task_id: str) -> str:
    """The HumanEval problem a task comes from: ``SingleLineInfilling/HumanEval/0/L3`` -> ``HumanEval/0``."""
    parts = task_id.split("/")
    return "/".join(parts[1:3]) if len(parts) >= 3 else task_id


def infilling_split(tasks: Sequence[dict], split: str, *, dev_problems: int = 40, seed: int = 0) -> list[dict]:
    """The tasks of one split. ``all``: every task, in file order. ``dev``/``test``: the HumanEval problems
    are shuffled with ``seed`` and the first ``dev_problems`` form dev, the rest test, so no problem has
    lines in both (the lines of one function are far from independent); the split's tasks come in a
    seeded random order, so its first N are a random sample over problems."""
    import random

    if split == "all":
        return list(tasks)
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'all', 'dev' or 'test', not {split!r}")
    problems = sorted({task_problem(t["task_id"]) for t in tasks}, key=lambda p: (len(p), p))
    random.Random(seed).shuffle(problems)
    dev = set(problems[:dev_problems])
    chosen = [t for t in tasks if (task_problem(t["task_id"]) in dev) == (split == "dev")]
    random.Random(seed).shuffle(chosen)
    return chosen


def load_mbpp(path: str | Path) -> list[dict]:
    """MBPP records with the reference code's CRLF line ends normalised (the shots quote it)."""
    rows = read_jsonl(path)
    for r in rows:
        r["code"] = r["code"].replace("\r\n", "\n")
    return rows


def mbpp_split(rows: list[dict], ids: tuple[int, int] = MBPP_TEST_IDS) -> list[dict]:
    return [r for r in rows if ids[0] <= r["task_id"] <= ids[1]]


# ---- programs ---------------------------------------------------------------------------------------

def check_program(problem: dict, completion: str) -> str:
    """openai/human-eval execution.py's check program, verbatim."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def infilling_program(problem: dict, middle: str) -> str:
    """openai/human-eval-infilling execution.py's check program: the middle between prompt and suffix."""
    return (problem["prompt"] + middle + problem["suffix"] + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})")


def mbpp_program(problem: dict, code: str) -> str:
    """The candidate, the test setup code (it uses the candidate's classes, e.g. task 367), the asserts."""
    setup = problem.get("test_setup_code", "").replace("\r\n", "\n")
    return code + "\n" + setup + "\n" + "\n".join(problem["test_list"]) + "\n"


def mbpp_prompt(problem: dict, shots: Sequence[dict]) -> str:
    """Austin et al.'s few-shot format: each shot ``... [BEGIN]\\n{code}\\n[DONE]``, then the open task."""
    def block(p: dict) -> str:
        tests = "\n".join(p["test_list"])
        return (f"You are an expert Python programmer, and here is your task: {p['text']} "
                f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")

    return "".join(block(s) + s["code"] + "\n[DONE]\n" for s in shots) + block(problem)


# ---- scoring ----------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), as the stable product in human-eval's evaluation.py."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def estimate_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> list[float]:
    """pass@k per problem (mean over problems is the benchmark score)."""
    return [pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct, strict=True)]


def first_line(text: str) -> str:
    """Single-line infilling: the generated line with its newline (the suffix starts on the next line)."""
    j = text.find("\n")
    return text[: j + 1] if j >= 0 else text + "\n"


def normalized_lines(code: str) -> list[str]:
    """Lines stripped of surrounding whitespace, blank lines dropped: the unit of exact match."""
    return [s for s in (line.strip() for line in code.splitlines()) if s]


def exact_match(generated: str, canonical: str) -> bool:
    """Infilling exact match: the same non-blank lines, each compared stripped."""
    return normalized_lines(generated) == normalized_lines(canonical)


# ---- generation -------------------------------------------------------------------------------------

def decode_continuation(tokenizer, ids: Sequence[int]) -> str:
    """Decode generated ids as a continuation: behind an anchor, so no leading space is dropped."""
    anchor = tokenizer("\n", add_special_tokens=False)["input_ids"]
    kw = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    base = tokenizer.decode(anchor, **kw)
    text = tokenizer.decode(list(anchor) + list(ids), **kw)
    return text[len(base):] if text.startswith(base) else tokenizer.decode(list(ids), **kw)


def generate_ids(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, n: int = 1, stop_ids: Sequence[int] = (),
                 stop_strings: Sequence[str] = (), batch_size: int = 8, seed: int = 0,
                 suppress_ids: Sequence[int] = (), heal: Sequence[Sequence[int] | None] | None = None,
                 progress: bool = False, desc: str = "generate") -> list[list[list[int]]]:
    """``n`` continuations (token ids, cut before EOS/any stop id) of each tokenized prompt, through the
    generation engine (one prefill per prompt for its ``n`` samples).

    Greedy when ``temperature`` is 0, else nucleus sampling with one seeded stream per sample, so parent
    and derived draw with the same seeds. ``progress`` reports completions done under ``desc``."""
    from herd.engine.generation import generate_ids as engine_ids

    ends = sorted({i for i in [tokenizer.eos_token_id, *stop_ids] if i is not None})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (ends[0] if ends else 0)
    rows = engine_ids(model, [list(p) for p in prompts], max_new_tokens=max_new_tokens, n=n,
                      temperature=temperature, top_p=top_p, stop_ids=ends, stop_strings=stop_strings,
                      tokenizer=tokenizer, pad_id=pad, batch_size=batch_size, seed=seed, suppress_ids=suppress_ids,
                      heal=heal, progress=progress, desc=desc)
    return [[s.ids for s in samples] for samples in rows]


def complete(model, tokenizer, prompts: Sequence[str], *, stops: Sequence[str] = STOP_SEQUENCES,
             max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
             batch_size: int = 8, seed: int = 0, progress: bool = False, desc: str = "generate") -> list[list[str]]:
    """Completions of raw text prompts (BOS as the tokenizer adds it), truncated at the stop sequences."""
    enc = [tokenizer(p)["input_ids"] for p in prompts]
    rows = generate_ids(model, tokenizer, enc, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, n=n, stop_strings=stops, batch_size=batch_size, seed=seed,
                        progress=progress, desc=desc)
    return [[truncate(decode_continuation(tokenizer, ids), stops) for ids in samples] for samples in rows]


def healed_prompt(tokenizer, prefix: str, suffix: str, mode: str) -> tuple[list[int], str]:
    """The infilling prompt without the prefix's last token, and that token's text, which the middle must
    start with (token healing); ``(prompt, "")`` where there is nothing to heal.

    A single-line task's prefix ends with a newline. Code Llama's SentencePiece keeps a newline apart from
    the next line's indentation, so the paper's prompts end the prefix at a token boundary of prefix +
    middle. A byte-level BPE (SmolLM2, Llama 3) merges ``"\n" + "    "`` into one token: ``enc(prefix)``
    then ends in a lone newline token, and the middle starts with a pure-space token, a pair that text
    encoded in one piece never holds. SPM training encodes prefix and middle together, so its prompt ends
    inside a token; PSM training encodes them apart, but a character-level split lands at a line start
    about once a line (~1 in 40), so the model has rarely seen the pair. Dropping the prefix's last token
    and letting the model write it (with the middle's indentation, ``"\n    "``) restores the boundary
    of code as it is written, in both layouts."""
    from herd.data.transforms.fim import infill_prompt_ids, plain_ids

    pre = plain_ids(tokenizer, prefix)
    text = tokenizer.decode(pre[-1:], clean_up_tokenization_spaces=False) if pre else ""
    if not text or "\ufffd" in text or not prefix.endswith(text):  # nothing, a special or partial-byte token
        return infill_prompt_ids(tokenizer, prefix, suffix, mode, prefix_ids=pre), ""
    return infill_prompt_ids(tokenizer, prefix, suffix, mode, prefix_ids=pre[:-1]), text


def _vocab_text(tokenizer) -> list[str]:
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)


def healing_tokens(tokenizer, dropped: Sequence[str]) -> list[list[int] | None]:
    """Per healed prompt, the tokens whose text starts with its dropped text (token healing's constraint
    on the first generated token); None where nothing was dropped."""
    vocab = _vocab_text(tokenizer) if any(dropped) else []
    by_text = {d: [t for t, v in enumerate(vocab) if v.startswith(d)] for d in set(dropped) if d}
    return [by_text[d] if d else None for d in dropped]


def infill(model, tokenizer, problems: Sequence[dict], mode: str, *, single_line: bool, max_new_tokens: int = 128,
           batch_size: int = 8, heal: bool = False, progress: bool = False, desc: str = "infill") -> list[str]:
    """Greedy middles in Code Llama's PSM/SPM inference layout, until <EOT>, EOS or (single-line) a newline.

    With ``heal`` the prompt loses the prefix's last token, which the model writes again
    (:func:`healed_prompt`); the middle is what follows that token's text.
    A tokenizer without the sentinel tokens (the parent) sees them as text; "<EOT>" then stops as text."""
    from herd.data.transforms.fim import SENTINELS, eot_id, infill_prompt_ids

    eot = eot_id(tokenizer)
    stops = ["\n"] if single_line else []
    if eot is None:
        stops.append(SENTINELS[3])
    if heal:  # the first token re-writes the dropped text, in the same decode
        heads = [healed_prompt(tokenizer, p["prompt"], p["suffix"], mode) for p in problems]
        prompts, dropped = [ids for ids, _ in heads], [d for _, d in heads]
    else:
        prompts = [infill_prompt_ids(tokenizer, p["prompt"], p["suffix"], mode) for p in problems]
        dropped = [""] * len(problems)
    rows = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                        stop_ids=[eot] if eot is not None else [], stop_strings=stops, batch_size=batch_size,
                        heal=healing_tokens(tokenizer, dropped) if any(dropped) else None,
                        progress=progress, desc=desc)
    middles = []
    for d, (ids,) in zip(dropped, rows, strict=True):
        lead = ""
        if d and ids:  # the healed token's text beyond what the prompt lost starts the middle
            lead, ids = tokenizer.decode(ids[:1], clean_up_tokenization_spaces=False)[len(d):], ids[1:]
        text = lead + decode_continuation(tokenizer, ids)
        if eot is None:
            text = truncate(text, [SENTINELS[3]])
        middles.append(first_line(text) if single_line else text)
    return middles


def middle_nll(model, tokenizer, problems: Sequence[dict], mode: str, *, heal: bool = False, progress: bool = False,
               desc: str = "middle NLL") -> list[float | None]:
    """Mean negative log-likelihood (nats/token) of each problem's true middle after the PSM/SPM infilling
    prompt, teacher-forced: a graded measure of infilling where exact match of a small model is all 0.

    Without ``heal``: the paper's prompt, then the middle tokenized on its own. With ``heal``: the prompt
    of :func:`healed_prompt`, then the tokens from the dropped text on, encoded as the layout's training
    encodes them: PSM the dropped text + middle on its own; SPM prefix + middle together, from the
    re-written boundary token on.
    The closing <EOT> is not scored (a parent has no such token)."""
    import torch

    from herd.core.progress import Progress
    from herd.data.transforms.fim import infill_prompt_ids, plain_ids

    out = []
    dev = next(model.parameters()).device
    model.eval()
    for p in Progress(problems, desc=desc, unit="problem", enabled=progress):
        middle = p["canonical_solution"]
        target = plain_ids(tokenizer, middle)
        if not target:
            out.append(None)
            continue
        prompt, dropped = healed_prompt(tokenizer, p["prompt"], p["suffix"], mode) if heal \
            else (infill_prompt_ids(tokenizer, p["prompt"], p["suffix"], mode), "")
        if dropped and mode == "psm":
            target = plain_ids(tokenizer, dropped + middle)
        elif dropped:
            pre = plain_ids(tokenizer, p["prompt"])
            joint = plain_ids(tokenizer, p["prompt"] + middle)
            keep = len(pre) - 1  # the prompt holds pre[:keep]; joint shares them unless a merge reaches further
            while keep > 0 and joint[:keep] != pre[:keep]:
                keep -= 1
            prompt = prompt[:len(prompt) - (len(pre) - 1 - keep)]
            target = joint[keep:]
        ids = torch.tensor([prompt + target], device=dev)
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1:-1].float()
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(target, device=dev))
        out.append(float(nll))
    return out


def mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else 0.0
