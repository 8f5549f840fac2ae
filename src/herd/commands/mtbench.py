"""``herd eval mtbench-answers ARTIFACT --questions FILE --out FILE`` and
``herd eval judge ANSWERS_A ANSWERS_B --judge MODEL_OR_URL``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_eval_commands(evals) -> None:
    a = evals.add_parser("mtbench-answers", help="answer MT-bench-format questions (category temperatures, "
                         "all turns in the model's own template) into a FastChat answer file")
    a.add_argument("artifact", help="artifact, derive workspace or base spec")
    a.add_argument("--questions", required=True, help="FastChat question.jsonl ({question_id, category, turns})")
    a.add_argument("--out", required=True, help="answer file to write (.jsonl)")
    a.add_argument("--model-id", help="model_id written into the answers (default: the artifact's name)")
    a.add_argument("--max-new-tokens", type=int, default=1024, help="per turn (MT-bench: 1024)")
    a.add_argument("--max-turns", type=int, help="answer only the first N turns")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--batch-size", type=int, default=8)
    a.set_defaults(func=_cmd_answers)

    j = evals.add_parser("judge", help="pairwise MT-bench judgment of two answer files (both orders), "
                         "win/tie/loss with a bootstrap confidence interval")
    j.add_argument("answers_a", help="answer file of model A (model_1)")
    j.add_argument("answers_b", help="answer file of model B (model_2)")
    j.add_argument("--judge", required=True, help="a herd-loadable model (base spec, artifact, HF folder) run "
                   "in-process, or an OpenAI-compatible endpoint URL (http://host:port/v1)")
    j.add_argument("--judge-model", help="model name at the endpoint (default: the first it lists)")
    j.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    j.add_argument("--questions", help="question file (default: the question text stored in the answer files)")
    j.add_argument("--out", help="judgment file (.jsonl; default judgments-<A>-vs-<B>.jsonl)")
    j.add_argument("--max-new-tokens", type=int, default=2048, help="judge output limit (FastChat: 2048)")
    j.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--json", action="store_true", help="print the summary as JSON")
    j.set_defaults(func=_cmd_judge)


def _cmd_answers(args) -> int:
    from herd.evals.mtbench import answer_questions

    out = answer_questions(args.artifact, args.questions, args.out, model_id=args.model_id,
                           max_new_tokens=args.max_new_tokens, max_turns=args.max_turns, seed=args.seed,
                           batch_size=args.batch_size)
    print(f"answers: {out}")
    return 0


def _cmd_judge(args) -> int:
    import os

    from herd.evals.judge import games, make_judge, play, summarize, summary_markdown
    from herd.evals.mtbench import read_answers, read_questions

    ans_a, ans_b = read_answers(args.answers_a), read_answers(args.answers_b)
    questions = {q.question_id: q.turns for q in read_questions(args.questions)} if args.questions else None
    game_list = games(ans_a, ans_b, questions)  # checked before the judge loads
    name_a = next(iter(ans_a.values())).get("model_id") or Path(args.answers_a).stem
    name_b = next(iter(ans_b.values())).get("model_id") or Path(args.answers_b).stem
    judge = make_judge(args.judge, model=args.judge_model, api_key=os.environ.get(args.api_key_env),
                       max_new_tokens=args.max_new_tokens)
    results = play(judge, game_list, model_1=name_a, model_2=name_b, progress=True)
    out = Path(args.out or f"judgments-{Path(args.answers_a).stem}-vs-{Path(args.answers_b).stem}.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    summary = summarize(results, n_boot=args.bootstrap, seed=args.seed)
    print(json.dumps(summary, indent=2) if args.json else summary_markdown(summary))
    print(f"judgments: {out}", file=sys.stderr if args.json else sys.stdout)
    return 0
