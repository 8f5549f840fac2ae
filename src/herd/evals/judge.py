"""Pairwise judging of two answer files with MT-bench's pairwise judge (FastChat ``llm_judge``).

Protocol (FastChat ``common.py`` ``run_judge_pair`` / ``play_a_match_pair``, ``show_result.py``):
- turn 1 is judged with the ``pair-v2`` prompt, turn 2 (when both models answered it) with
  ``pair-v2-multi-turn``, which shows both whole conversations and asks about the second answer;
- every game is played twice, A/B swapped, to cancel position bias; the verdict is the first of
  ``[[A]]``, ``[[B]]``, ``[[C]]`` (tie) found in the judgment, else an error;
- a game whose two orders disagree, or which is a tie, counts as a tie; a game with an error in either
  order is left out (and counted);
- win rate = wins / games; adjusted win rate = (wins + ½ ties) / games. herd adds a percentile bootstrap
  confidence interval over games.
The judge is any herd-loadable model run in-process (greedy, its own template) or any
OpenAI-compatible endpoint given by URL (official ``openai`` client, temperature 0), as FastChat calls
GPT-4. Reference-guided prompts for math/reasoning/coding (``pair-math-v1``) are not used.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from herd.core.errors import HerdError
from herd.core.progress import Progress

# Verbatim from lm-sys/FastChat fastchat/llm_judge/data/judge_prompts.jsonl, entries "pair-v2" and
# "pair-v2-multi-turn" (read at commit 0e6e7fdc78bf64aceea1508694ce4e6472810b8b).
_PAIR_RULES = (
    "Avoid any positional biases and ensure that the order in which the responses were presented does not "
    "influence your decision. Do not allow the length of the responses to influence your evaluation. Do not "
    "favor certain names of the assistants. Be as objective as possible. After providing your explanation, "
    "output your final verdict by strictly following this format: \"[[A]]\" if assistant A is better, "
    "\"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)
PAIR_V2_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. " + _PAIR_RULES
)
PAIR_V2_TEMPLATE = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's "
    "Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
PAIR_V2_MULTI_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user questions. You should choose the assistant that follows the user's instructions and answers "
    "the user's questions better. Your evaluation should consider factors such as the helpfulness, relevance, "
    "accuracy, depth, creativity, and level of detail of their responses. You should focus on who provides a "
    "better answer to the second user question. Begin your evaluation by comparing the responses of the two "
    "assistants and provide a short explanation. " + _PAIR_RULES
)
PAIR_V2_MULTI_TEMPLATE = (
    "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
    "{answer_a_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_a_2}\n\n<|The End of Assistant A's "
    "Conversation with User|>\n\n\n<|The Start of Assistant B's Conversation with User|>\n\n### User:\n"
    "{question_1}\n\n### Assistant B:\n{answer_b_1}\n\n### User:\n{question_2}\n\n### Assistant B:\n"
    "{answer_b_2}\n\n<|The End of Assistant B's Conversation with User|>"
)
JUDGE_MAX_TOKENS = 2048  # FastChat chat_compeletion_openai(..., temperature=0, max_tokens=2048)


def parse_verdict(judgment: str) -> str:
    """``A``, ``B``, ``tie`` or ``error``, checked in FastChat's order ([[A]] first)."""
    if "[[A]]" in judgment:
        return "A"
    if "[[B]]" in judgment:
        return "B"
    if "[[C]]" in judgment:
        return "tie"
    return "error"


def pair_prompt(questions: list[str], answers_a: list[str], answers_b: list[str], turn: int) -> tuple[str, str]:
    """(system, user) for judging ``turn`` (1 or 2) of A against B."""
    if turn == 1:
        return PAIR_V2_SYSTEM, PAIR_V2_TEMPLATE.format(question=questions[0], answer_a=answers_a[0],
                                                       answer_b=answers_b[0])
    return PAIR_V2_MULTI_SYSTEM, PAIR_V2_MULTI_TEMPLATE.format(
        question_1=questions[0], question_2=questions[1], answer_a_1=answers_a[0], answer_b_1=answers_b[0],
        answer_a_2=answers_a[1], answer_b_2=answers_b[1])


# -- judges ---------------------------------------------------------------------------------------------

class LocalJudge:
    """A herd-loadable model judging in-process: greedy, in its own template. A template without a system
    turn gets the instruction folded into the user turn as ``[Instruction]\\n{system}\\n\\n{user}`` (what
    FastChat does for judges without a system prompt, ``run_judge_pair``'s Claude branch)."""

    def __init__(self, spec: str, *, max_new_tokens: int = JUDGE_MAX_TOKENS, batch_size: int = 4):
        from herd.artifacts import artifact_path, artifact_template
        from herd.base import load_model, load_tokenizer, resolve_base

        ref = resolve_base(artifact_path(spec))
        self.name = ref.name
        self.tokenizer = load_tokenizer(ref)
        self.template = artifact_template(ref.path, self.tokenizer)
        self.model = load_model(ref)
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def messages(self, system: str, user: str) -> list[dict]:
        if "system" in self.template.roles:
            return [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return [{"role": "user", "content": "[Instruction]\n" + system + "\n\n" + user}]

    def complete(self, prompts: list[tuple[str, str]]) -> list[str]:
        from herd.engine.generation import generate

        texts = [self.template.prompt(self.messages(s, u), self.tokenizer) for s, u in prompts]
        return generate(self.model, self.tokenizer, texts, max_new_tokens=self.max_new_tokens, temperature=0.0,
                        stop=self.template.stop_strings(self.tokenizer), batch_size=self.batch_size)


class EndpointJudge:
    """Any OpenAI-compatible chat endpoint (``base_url`` like ``http://host:8000/v1``), temperature 0.
    The key comes from ``api_key`` or ``$OPENAI_API_KEY`` (``EMPTY`` when unset, for local servers)."""

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None,
                 max_new_tokens: int = JUDGE_MAX_TOKENS, timeout: float = 600):
        try:
            import openai
        except ImportError:
            raise HerdError("a judge URL needs the openai client: pip install openai") from None
        self.client = openai.OpenAI(base_url=url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                                    timeout=timeout)
        if model is None:
            models = [m.id for m in self.client.models.list()]
            if not models:
                raise HerdError(f"{url}: the endpoint lists no models; give --judge-model")
            model = models[0]
        self.name, self.max_new_tokens = model, max_new_tokens

    def complete(self, prompts: list[tuple[str, str]]) -> list[str]:
        out = []
        for system, user in prompts:
            resp = self.client.chat.completions.create(
                model=self.name, messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                temperature=0, max_tokens=self.max_new_tokens, n=1)
            out.append(resp.choices[0].message.content or "")
        return out


def make_judge(spec: str, *, model: str | None = None, api_key: str | None = None,
               max_new_tokens: int = JUDGE_MAX_TOKENS):
    """A URL (``http(s)://…``) is an endpoint; anything else is loaded with herd (base, artifact, folder)."""
    if spec.startswith(("http://", "https://")):
        return EndpointJudge(spec, model=model, api_key=api_key, max_new_tokens=max_new_tokens)
    return LocalJudge(spec, max_new_tokens=max_new_tokens)


# -- playing and counting games ----------------------------------------------------------------------------

@dataclass
class Game:
    question_id: object
    turn: int
    prompts: tuple[tuple[str, str], tuple[str, str]]  # (A=model_1, B=model_2), then swapped


def games(answers_1: dict, answers_2: dict, questions: dict | None = None) -> list[Game]:
    """One game per question (and one more for turn 2 when both answered it). ``questions``: question_id
    -> list of turns; by default the ``question_turns`` stored in the answer files."""
    missing = sorted(set(answers_1) ^ set(answers_2), key=str)
    if missing:
        raise HerdError(f"the answer files cover different questions (e.g. {missing[:5]})")
    out = []
    for qid in sorted(answers_1, key=lambda q: (isinstance(q, str), q)):
        qs = (questions or {}).get(qid) or answers_1[qid].get("question_turns")
        if not qs:
            raise HerdError(f"question {qid!r}: no question text (give the question file)")
        a1, a2 = answers_1[qid]["choices"][0]["turns"], answers_2[qid]["choices"][0]["turns"]
        for turn in (1, 2):
            if len(qs) >= turn and len(a1) >= turn and len(a2) >= turn:
                out.append(Game(qid, turn, (pair_prompt(qs, a1, a2, turn), pair_prompt(qs, a2, a1, turn))))
    return out


def combine(g1: str, g2: str) -> str:
    """Both orders' verdicts (already mapped to ``model_1``/``model_2``/``tie``/``error``) -> one outcome."""
    if "error" in (g1, g2):
        return "error"
    if g1 == "tie" or g1 != g2:
        return "tie"  # show_result.py: a tie or an inconsistent pair counts as a tie
    return g1


def play(judge, game_list: list[Game], *, model_1: str, model_2: str, batch: int = 16,
         progress: bool = False) -> list[dict]:
    """Judge every game in both orders; FastChat's judgment records plus the combined ``winner``."""
    flat = [p for g in game_list for p in g.prompts]
    judgments: list[str] = []
    with Progress(total=len(flat), desc="judge", unit="judgment", enabled=progress) as bar:
        for i in range(0, len(flat), batch):
            judgments += judge.complete(flat[i:i + batch])
            bar.update(len(flat[i:i + batch]))
    out = []
    for k, g in enumerate(game_list):
        j1, j2 = judgments[2 * k], judgments[2 * k + 1]
        g1 = {"A": "model_1", "B": "model_2"}.get(parse_verdict(j1), parse_verdict(j1))
        g2 = {"A": "model_2", "B": "model_1"}.get(parse_verdict(j2), parse_verdict(j2))
        out.append({"question_id": g.question_id, "model_1": model_1, "model_2": model_2, "turn": g.turn,
                    "g1_winner": g1, "g2_winner": g2, "winner": combine(g1, g2),
                    "judge": [getattr(judge, "name", "judge"), "pair-v2" if g.turn == 1 else "pair-v2-multi-turn"],
                    "g1_user_prompt": g.prompts[0][1], "g1_judgment": j1,
                    "g2_user_prompt": g.prompts[1][1], "g2_judgment": j2, "tstamp": time.time()})
    return out


def bootstrap_ci(outcomes: list[str], stat, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
                 ) -> tuple[float, float] | None:
    """Percentile bootstrap over games of ``stat(outcomes)``; None without games."""
    import numpy as np

    if not outcomes:
        return None
    rng = np.random.default_rng(seed)
    arr = np.array(outcomes)
    vals = [stat(arr[rng.integers(0, len(arr), len(arr))]) for _ in range(n_boot)]
    lo, hi = np.percentile(vals, [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2])
    return round(float(lo), 4), round(float(hi), 4)


def summarize(results: list[dict], *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Win/tie/loss of model_1 against model_2 over the games without errors, with bootstrap CIs."""
    outcomes = [r["winner"] for r in results if r["winner"] != "error"]
    n = len(outcomes)

    def rate(kind):
        return lambda a: float((a == kind).mean()) if len(a) else 0.0

    def adjusted(a):
        return float(((a == "model_1") + 0.5 * (a == "tie")).mean()) if len(a) else 0.0

    import numpy as np

    arr = np.array(outcomes)
    kw = {"n_boot": n_boot, "seed": seed, "confidence": confidence}
    win, tie, loss = (int((arr == k).sum()) for k in ("model_1", "tie", "model_2"))
    return {
        "model_1": results[0]["model_1"] if results else None, "model_2": results[0]["model_2"] if results else None,
        "judge": results[0]["judge"][0] if results else None,
        "games": n, "errors": len(results) - n, "win": win, "tie": tie, "loss": loss,
        "inconsistent": sum(1 for r in results if r["winner"] == "tie" and r["g1_winner"] != r["g2_winner"]),
        "win_rate": round(win / n, 4) if n else None, "tie_rate": round(tie / n, 4) if n else None,
        "loss_rate": round(loss / n, 4) if n else None,
        "win_rate_adjusted": round(adjusted(arr), 4) if n else None,
        "ci": {"confidence": confidence, "n_boot": n_boot,
               "win_rate": bootstrap_ci(outcomes, rate("model_1"), **kw),
               "loss_rate": bootstrap_ci(outcomes, rate("model_2"), **kw),
               "win_rate_adjusted": bootstrap_ci(outcomes, adjusted, **kw)},
    }


def summary_markdown(s: dict, title: str = "Pairwise judgment") -> str:
    ci = s["ci"]

    def fmt(key):
        v, c = s[key], ci.get(key)
        return "–" if v is None else f"{v:.3f}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if c else "")

    pct = int(round(100 * ci["confidence"]))
    return "\n".join([
        f"## {title}", "",
        f"`{s['model_1']}` (model 1) vs `{s['model_2']}` (model 2), judge `{s['judge']}`, MT-bench pair-v2 "
        f"prompts, both orders. {s['games']} games ({s['errors']} left out for unparsable verdicts, "
        f"{s['inconsistent']} inconsistent across orders → tie).", "",
        "| win | tie | loss | win rate | loss rate | win rate, ties ½ |", "|---:|---:|---:|---|---|---|",
        f"| {s['win']} | {s['tie']} | {s['loss']} | {fmt('win_rate')} | {fmt('loss_rate')} | "
        f"{fmt('win_rate_adjusted')} |", "",
        f"Brackets: {pct} % percentile bootstrap over games ({ci['n_boot']} resamples)."])
