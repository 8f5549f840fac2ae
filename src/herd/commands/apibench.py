"""``herd apibench score``: score any Gorilla-format response file with herd's AST evaluator."""

from __future__ import annotations

import json

from herd.data.readers.apibench_files import HUBS


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("apibench", help="APIBench (Gorilla) tools: score a response file by AST matching")
    sub = p.add_subparsers(dest="apibench_cmd", required=True)
    s = sub.add_parser("score", help="accuracy / hallucination / error of a response file "
                       '({"question_id", "text"} per line)')
    s.add_argument("responses", help="response file (JSON Lines)")
    s.add_argument("--hub", choices=HUBS, default="torchhub")
    s.add_argument("--data", default="shared:gorilla_apibench", help="the APIBench dataset folder")
    s.add_argument("--verdicts", help="write one verdict per response to this JSON Lines file")
    s.set_defaults(func=cmd_score)


def cmd_score(args) -> int:
    from herd.evals.apibench import HubData

    sc = HubData(args.hub, args.data).score_file(args.responses, progress=True)
    s = sc.summary()
    print(f"{args.responses}: {s['n']} responses, {args.hub}")
    print(f"  accuracy      {100 * s['accuracy']:6.2f} %  ({s['correct']})")
    print(f"  hallucination {100 * s['hallucination_rate']:6.2f} %  ({s['hallucination']})")
    print(f"  error         {100 * s['error_rate']:6.2f} %  ({s['wrong_api']} wrong API, "
          f"{s['no_api_call']} without api_call)")
    if args.verdicts:
        with open(args.verdicts, "w") as f:
            for row in sc.verdict_rows():
                f.write(json.dumps(row) + "\n")
    return 0
