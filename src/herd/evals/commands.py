"""``herd eval NAME ARTIFACT …``: run one evaluation on an artifact outside a recipe.

Each evaluation that offers a command lives in a module of ``EVAL_COMMAND_MODULES`` defining
``add_eval_commands(subparsers)``; a handler receives the parsed args and returns an exit code.
"""

from __future__ import annotations

import importlib

EVAL_COMMAND_MODULES: list[str] = [
    "herd.guard.commands",
    "herd.commands.mtbench",
]


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="run one evaluation on an artifact (e.g. herd eval guard ARTIFACT --data FILE)")
    evals = p.add_subparsers(dest="eval_name", required=True, metavar="EVAL")
    for mod in EVAL_COMMAND_MODULES:
        importlib.import_module(mod).add_eval_commands(evals)
