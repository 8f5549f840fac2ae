"""The ``herd`` command. Core commands live here; other command groups register through
``COMMAND_MODULES`` (each module defines ``add_commands(subparsers)``; a handler receives the parsed
args and returns an exit code)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from herd.core.errors import HerdError

# Modules that add subcommands: each defines add_commands(subparsers).
COMMAND_MODULES: list[str] = [
    "herd.commands.apibench",
    "herd.export.commands",
    "herd.serve.commands",
    "herd.family.commands",
    "herd.evals.commands",
    "herd.guard.commands",
    "herd.commands.generate",
    "herd.ui.commands",
]


def _cmd_derive(args) -> int:
    from herd.api import derive

    if args.no_memory_check:  # an environment variable, so torchrun's workers see it too
        os.environ["HERD_NO_MEMORY_CHECK"] = "1"

    overrides = {"eval_split": "dev"} if args.eval_split == "dev" else {}
    if args.eval_size is not None:
        overrides["eval_size"] = args.eval_size
    if args.dev_size is not None:
        overrides["dev_size"] = args.dev_size
    overrides = overrides or None
    result = derive(args.recipe, base=args.base, profile=args.profile, data=args.data, out=args.out,
                    resume=args.resume, max_steps=args.max_steps, report_to=args.report_to, overrides=overrides)
    print(f"\nartifact: {result.path}")
    if result.scorecard_md:
        print()
        print(result.scorecard_md)
    return 0


def _cmd_chat(args) -> int:
    from herd.api import chat

    return chat(args.artifact, message=args.message, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, system=args.system)


def _cmd_info(args) -> int:
    from herd.api import info

    print(info(args.artifact, as_json=args.json))
    return 0


def _cmd_bases(args) -> int:
    from herd.api import bases

    for row in bases():
        print(f"{row['name']:<10} {row['status']:<14} {row['description']}")
    print("\nAlso accepted: an HF folder (safetensors), a .gguf file, a herd artifact, "
          "or a hub id already in the local HF cache.")
    return 0


def _cmd_doctor(args) -> int:
    from herd.doctor import main as doctor

    return doctor()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="herd", description="Re-derive the Llama family: recipes, "
                                "scorecards, lineage.")
    p.add_argument("--version", action="version", version=f"herd {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("derive", help="run a recipe: data → stages → scorecard → artifact")
    d.add_argument("recipe", help="recipe name (alpaca) or path to a recipe YAML")
    d.add_argument("--base", help="base to derive from (default: the recipe's)")
    d.add_argument("--profile", default="tiny", help="tiny (laptop CPU, the ~30-minute quick demo), small (llama2chat, llamaguard, meditron: laptop CPU, "
                   "up to ~2 hours, sized to show the recipe's gain), "
                   "gpu (one H100-class GPU, minutes to an hour) or full (published scale)")
    d.add_argument("--data", action="append", help="training file(s) replacing the recipe's data")
    d.add_argument("--out", help="output folder (default runs/<recipe>-<base>-<profile>)")
    d.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    d.add_argument("--max-steps", type=int, help="stop each training stage after this many optimizer steps")
    d.add_argument("--eval-split", choices=["test", "dev"], default="test",
                   help="held-out split the scorecard scores, for recipes with dev_size: dev while choosing "
                   "settings, test (default) once for the final run")
    d.add_argument("--eval-size", type=int, metavar="N",
                   help="hold out N records for the evals instead of the recipe's eval_size (a small --data file); "
                   "listed in the scorecard's deviations")
    d.add_argument("--dev-size", type=int, metavar="N",
                   help="of those, N form the dev split instead of the recipe's dev_size (0: no dev split)")
    d.add_argument("--report-to", metavar="TARGETS",
                   help="also send training metrics to tensorboard,mlflow,wandb (comma-separated; 'none' for "
                   "none; default: the recipe's report_to). metrics.jsonl is always written")
    d.add_argument("--no-memory-check", action="store_true",
                   help="run even when a stage's predicted peak memory exceeds what the device has")
    d.set_defaults(func=_cmd_derive)

    c = sub.add_parser("chat", help="talk to an artifact in its own template")
    c.add_argument("artifact")
    c.add_argument("-m", "--message", action="append", help="send this message and exit (repeatable)")
    c.add_argument("--system", help="system prompt (templates that have one)")
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    c.set_defaults(func=_cmd_chat)

    i = sub.add_parser("info", help="lineage and scorecard of an artifact")
    i.add_argument("artifact")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_info)

    b = sub.add_parser("bases", help="what herd can load")
    b.set_defaults(func=_cmd_bases)

    doc = sub.add_parser("doctor", help="check this machine before a long run: CPU features, threads, torch, "
                         "llama.cpp build, memory, base, data")
    doc.set_defaults(func=_cmd_doctor)

    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return p


def _version() -> str:
    from herd import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HerdError as e:
        print(f"herd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nherd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
