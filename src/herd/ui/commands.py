"""``herd ui [WORKSPACE] [--port 7860] [--host 127.0.0.1] [--api-key KEY]``: the web app, on loopback by default."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from herd.core.errors import HerdError


def _cmd_ui(args) -> int:
    import uvicorn

    from herd.serve.commands import _is_loopback
    from herd.ui import create_app

    api_key = args.api_key or os.environ.get("HERD_API_KEY")
    if not _is_loopback(args.host) and not api_key:
        raise HerdError(f"refusing to serve the UI on {args.host} without --api-key (or HERD_API_KEY): it can "
                        "start training jobs and read the workspace; loopback addresses need none")
    root = Path(args.workspace)
    if not root.is_dir():
        raise HerdError(f"{root}: no such workspace folder (`herd derive` writes runs/ by default; create it "
                        "or name another)")
    app = create_app(root, api_key=api_key)
    where = f"http://{args.host}:{args.port}/" + (f"?key={api_key}" if api_key else "")
    print(f"herd ui over {root.resolve()} at {where}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("ui", help="a local web app over a workspace: family tree, artifacts, runs, chat, compare")
    p.add_argument("workspace", nargs="?", default="runs", help="the workspace folder (default: runs)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; others need --api-key)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--api-key", help="require this key (default: $HERD_API_KEY, else none on loopback)")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=_cmd_ui)
