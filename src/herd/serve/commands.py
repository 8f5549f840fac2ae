"""``herd serve ARTIFACT... [--backend transformers|llamacpp]``: the OpenAI API on loopback by default."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from herd.core.errors import HerdError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_guard(args):
    """``--guard``: a Llama Guard artifact (``herd derive llamaguard``) or any herd base, as the
    server's moderation model; its taxonomy and dev-chosen threshold come from the artifact."""
    if not getattr(args, "guard", None):
        return None
    from herd.guard import Guard

    return Guard(args.guard, threshold=args.guard_threshold)


def _cmd_serve(args) -> int:
    import uvicorn

    from herd.serve import ServerConfig, create_app, load_served

    api_key = args.api_key or os.environ.get("HERD_API_KEY")
    if not _is_loopback(args.host) and not api_key:
        raise HerdError(f"refusing to serve on {args.host} without --api-key (or HERD_API_KEY); "
                        "loopback addresses need none")
    if args.gguf and len(args.artifact) != 1:
        raise HerdError("--gguf names one file; serve one artifact with it")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = [load_served(a, args.backend, gguf=args.gguf, gguf_dtype=args.gguf_dtype, max_batch=args.max_batch,
                          context_length=args.ctx, threads=args.threads) for a in args.artifact]
    guard = build_guard(args)
    config = ServerConfig(api_key=api_key, max_body_bytes=args.max_body_bytes,
                          max_tokens_limit=args.max_tokens_limit, guard_input=args.guard_input,
                          guard_output=args.guard_output)
    app = create_app(models, config, guard=guard)
    if guard is not None:
        print(f"moderation by {guard.name} (threshold {guard.settings.threshold}): /v1/moderations"
              + (", chat input refused when flagged" if args.guard_input else "")
              + (", output withheld when flagged" if args.guard_output else ""), file=sys.stderr)
    for m in models:
        print(f"serving {m.id} ({m.backend.name}, template {getattr(m.template, 'name', None)}, "
              f"context {m.backend.context_length}) at http://{args.host}:{args.port}/v1", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        for m in models:
            m.backend.close()
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve artifacts over an OpenAI-compatible HTTP API")
    p.add_argument("artifact", nargs="+", help="artifact folder(s); each is served under its lineage name")
    p.add_argument("--backend", choices=("transformers", "llamacpp"), default="transformers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $HERD_API_KEY, else none)")
    p.add_argument("--gguf", help="llamacpp: this GGUF instead of ARTIFACT/export/NAME.DTYPE.gguf")
    p.add_argument("--gguf-dtype", default="f16", choices=("f32", "f16", "q8_0"),
                   help="llamacpp: which export to run (made on first use)")
    p.add_argument("--max-batch", type=int, default=16, help="transformers: requests decoded together")
    p.add_argument("--ctx", type=int, help="context length (default: the model's)")
    p.add_argument("--threads", type=int, help="CPU threads for either backend (default: the library's choice)")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--guard", metavar="ARTIFACT",
                   help="moderate with this Llama Guard artifact: /v1/moderations, refuse flagged input, "
                        "withhold flagged output")
    p.add_argument("--guard-threshold", type=float, help="P(unsafe) threshold (default: the artifact's)")
    p.add_argument("--guard-input", action=argparse.BooleanOptionalAction, default=True,
                   help="refuse chat requests whose messages the guard flags (default: on)")
    p.add_argument("--guard-output", action=argparse.BooleanOptionalAction, default=True,
                   help="withhold replies the guard flags, finish_reason content_filter (default: on)")
    p.set_defaults(func=_cmd_serve)
