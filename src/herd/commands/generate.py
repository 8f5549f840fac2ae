"""``herd generate self-instruct --teacher MODEL_OR_URL [--seeds FILE] --n N --out FILE``."""

from __future__ import annotations

import json
import os
import sys


def _cmd_self_instruct(args) -> int:
    from herd.data.builds.selfinstruct.generate import (
        GenerationSettings,
        format_report,
        generate_self_instruct,
    )
    from herd.data.builds.selfinstruct.teachers import make_teacher
    from herd.engine.generation import generate_ids

    cfg = GenerationSettings(variant=args.variant, n=args.n, seeds=args.seeds, prompt_file=args.prompt_file,
                             seed=args.seed, request_batch_size=args.batch_size, max_tokens=args.max_tokens,
                             temperature=args.temperature, top_p=args.top_p, max_requests=args.max_requests,
                             drop_empty_output=not args.keep_empty_output)
    bias = json.loads(args.logit_bias) if args.logit_bias else None
    teacher = make_teacher(args.teacher, api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                           model=args.model, api=args.api, rate_limit=args.rate_limit, retries=args.retries,
                           timeout=args.timeout, concurrency=args.concurrency, logit_bias=bias,
                           batch_size=args.batch_size or 5, generate_ids=generate_ids)
    print(f"[self-instruct] teacher {teacher.name}, variant {cfg.variant}, target {cfg.n} tasks", file=sys.stderr)
    st = generate_self_instruct(cfg, teacher, args.out, progress=not args.no_progress)
    print(format_report(st, args.out))
    return 0


def add_commands(sub) -> None:
    g = sub.add_parser("generate", help="make training data with a teacher model")
    gsub = g.add_subparsers(dest="generator", required=True)
    p = gsub.add_parser("self-instruct", help="Self-Instruct tasks as Alpaca generated them (recipes.md §1.2)",
                        description="Prompts a teacher with sampled seed tasks, parses the numbered tasks it "
                        "continues with, filters them (length, blacklist, 'Write a program', punctuation/non-"
                        "ASCII start, ROUGE-L > 0.7 against seeds and every kept task) and appends the kept "
                        "ones to --out (Alpaca JSON Lines). --variant self-instruct runs the original pipeline: "
                        "bootstrapped instructions, then classification identification, instance generation "
                        "(output-first for classification tasks, input-first otherwise) and the original's "
                        "instance filters; --out gets one record per instance, the steps' files lie beside it. "
                        "Re-running the same command continues.")
    p.add_argument("--teacher", required=True, help="a base herd loads (smollm2, tiny, HF folder, GGUF, artifact) "
                   "or an OpenAI-compatible URL (http://host:port/v1)")
    p.add_argument("--n", type=int, required=True, help="keep generating until this many tasks are kept "
                   "(self-instruct: instructions bootstrapped; each then gets up to 5 instances)")
    p.add_argument("--out", required=True, help="JSON Lines output (append-only; FILE.state.json beside it)")
    p.add_argument("--seeds", help="seed tasks JSONL (default: the 175 Self-Instruct seeds in shared data)")
    p.add_argument("--prompt-file", help="Alpaca's prompt.txt (default: the shared copy)")
    p.add_argument("--variant", choices=("alpaca", "self-instruct"), default="alpaca",
                   help="alpaca (default) or the original Self-Instruct (instructions, then instances)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (in-process teachers are deterministic)")
    p.add_argument("--batch-size", type=int, help="requests per batch (published: 5)")
    p.add_argument("--max-tokens", type=int, help="tokens per request (published: 3072 Alpaca, 1024 original; "
                   "the original's later steps keep their published settings)")
    p.add_argument("--temperature", type=float, help="published: 1.0 Alpaca, 0.7 original (bootstrapping)")
    p.add_argument("--top-p", type=float, help="published: 1.0 Alpaca, 0.5 original (bootstrapping)")
    p.add_argument("--max-requests", type=int, help="stop after this many requests even if --n is not reached")
    p.add_argument("--keep-empty-output", action="store_true", help="keep tasks whose output is empty")
    p.add_argument("--api-key", help="endpoint key (default: $OPENAI_API_KEY)")
    p.add_argument("--model", help="endpoint model id (default: the first the server lists)")
    p.add_argument("--api", choices=("completions", "chat"), default="completions",
                   help="endpoint route: /v1/completions (as Alpaca) or /v1/chat/completions")
    p.add_argument("--rate-limit", type=float, help="endpoint: at most this many requests per minute")
    p.add_argument("--retries", type=int, default=6, help="endpoint: retries on 429/5xx/timeouts (backoff)")
    p.add_argument("--timeout", type=float, default=600.0, help="endpoint: seconds per request")
    p.add_argument("--concurrency", type=int, default=5, help="endpoint: requests in flight at once")
    p.add_argument("--logit-bias", help='endpoint: JSON token→bias map (Alpaca on davinci: \'{"50256": -100}\')')
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_self_instruct)
