"""The README's shell commands, run, so the README cannot drift from what works.

Every command line in the README's ```bash / ```sh code blocks (and in unlabelled blocks, the lines that
start with a known program) must have an entry in ``TABLE`` below, and every entry must still be a
README command: a new README command forces a test entry, a removed one forces its entry out. Each
entry says how the command runs here: the README's own argv, rewritten only where it must be (the
``tiny`` base and ``--max-steps 1`` where the README's command would train for minutes or hours, a free
loopback port instead of 8000), each rewrite with its reason. ``test_table_runs_the_readme_argv`` checks
that an entry's argv still contains the README's argv in order, so a rewrite can only add or substitute.

The commands run as real subprocesses (this venv's ``herd``, ``python -m torch.distributed.run`` for
``torchrun``, what ``make -n demo`` says for ``make demo``) in one temporary workspace, so the README's
relative paths (``runs/alpaca-smollm2-tiny``, ``./model.gguf``, ...) mean there what they mean in a
checkout: ``make demo`` (rewritten onto the tiny base) writes ``runs/alpaca-smollm2-tiny``, which chat,
info, export and serve then use; the placeholder inputs (an HF folder, a GGUF, an Alpaca JSONL) are made
at the README's paths from the tiny base, the demo artifact and the shared Alpaca data.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
HERD = str(Path(sys.executable).with_name("herd"))  # the `herd` entry point of the venv running pytest
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
# An unlabelled block's line is a command when it starts with one of these (the "What a derive writes"
# tree and the "Layout" block start with paths, so they are output, not commands).
KNOWN_PROGRAMS = {"herd", "make", "torchrun", "python", "python3", "pip", "llama-server", "ollama", "vllm"}
DEMO_RUN = "runs/alpaca-smollm2-tiny"
API_KEY = "readme-test-key"
CMD_TIMEOUT_S = 600  # one command (the slowest, the full-profile step, takes ~45 s on 2 cores)
SERVE_START_S = 180  # the llamacpp server exports its GGUF on first use, then loads it


# ---- the README, parsed -------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    lines: tuple[str, ...]


def readme_blocks(text: str) -> list[Block]:
    """Fenced code blocks with their language (lowercased, '' when unlabelled)."""
    blocks, lang, start, body = [], None, 0, []
    for i, raw in enumerate(text.splitlines(), 1):
        fence = raw.strip()
        if lang is None:
            if fence.startswith("```"):
                lang, start, body = fence[3:].strip().lower(), i, []
        elif fence.startswith("```"):
            blocks.append(Block(lang, start, tuple(body)))
            lang = None
        else:
            body.append(raw)
    assert lang is None, f"README.md:{start}: code block never closed"
    return blocks


def strip_comment(line: str) -> str:
    """The line without a trailing shell ``# comment`` (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _starts_with_program(command: str) -> bool:
    first = command.split(maxsplit=1)[0]
    return first in KNOWN_PROGRAMS or first.startswith(".venv/bin/")


def readme_commands(text: str) -> list[str]:
    """Every shell command line of the README's code blocks, comments stripped, in README order."""
    out = []
    for block in readme_blocks(text):
        if block.lang not in SHELL_LANGS and block.lang != "":
            continue  # python, yaml, ...: not shell commands
        pending = ""
        for raw in block.lines:
            line = strip_comment(raw).strip()
            if line.startswith("$ "):
                line = line[2:].strip()
            if line.endswith("\\"):  # a continued command
                pending += line[:-1] + " "
                continue
            line, pending = (pending + line).strip(), ""
            if not line:
                continue
            if block.lang == "" and not _starts_with_program(line):
                continue  # an output / tree / layout block
            out.append(line)
    return out


def readme_argv(command: str) -> list[str]:
    """A README command as argv; ``[--opt VALUE]`` optional groups lose their brackets (they are run)."""
    argv = []
    for tok in shlex.split(command):
        if tok.startswith("[") and tok != "[":
            tok = tok[1:]
        if tok.endswith("]") and tok != "]":
            tok = tok[:-1]
        argv.append(tok)
    return argv


def readme_python_blocks(text: str) -> list[str]:
    return ["\n".join(b.lines) + "\n" for b in readme_blocks(text) if b.lang in ("python", "py")]


# ---- results and checks -------------------------------------------------------------------------

@dataclass
class Ran:
    argv: list[list[str]]
    returncode: int
    stdout: str
    stderr: str

    def tail(self, n: int = 4000) -> str:
        cmds = "\n".join(shlex.join(a) for a in self.argv)
        return f"$ {cmds}\nrc {self.returncode}\n--- stdout ---\n{self.stdout[-n:]}\n--- stderr ---\n{self.stderr[-n:]}"


def _line_value(out: str, prefix: str) -> str:
    """The value of the last line ``prefix VALUE`` a command printed."""
    found = [ln[len(prefix):].strip() for ln in out.splitlines() if ln.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in the output"
    return found[-1]


def _lineage(folder: Path) -> dict:
    path = folder / "lineage.json"
    assert path.is_file(), f"{path} missing"
    return json.loads(path.read_text())


def _derived(ws: Workspace, ran: Ran, run_dir: str) -> dict:
    """A derive's checks: it printed its artifact, ``run_dir/model`` links to it, lineage.json is there."""
    artifact = (ws.root / _line_value(ran.stdout, "artifact:")).resolve()
    model = ws.root / run_dir / "model"
    assert model.is_symlink() and model.resolve() == artifact, f"{model} does not link to {artifact}"
    lin = _lineage(artifact)
    assert lin["recipe"]["name"] == "alpaca" and lin["metrics"]["steps"] == 1
    assert "# Scorecard" in ran.stdout  # the derive prints the scorecard
    return lin


def check_demo(ws: Workspace, ran: Ran) -> None:
    lin = _derived(ws, ran, DEMO_RUN)
    assert lin["recipe"]["profile"] == "tiny" and lin["parent"]["name"] == "tiny"


def check_doctor(ws: Workspace, ran: Ran) -> None:
    assert "CPU" in ran.stdout


def check_chat_interactive(ws: Workspace, ran: Ran) -> None:
    assert "template 'alpaca'" in ran.stdout and "> " in ran.stdout


def check_chat_message(ws: Workspace, ran: Ran) -> None:
    lines = ran.stdout.splitlines()
    assert lines[0] == "> Give three tips for staying healthy.", ran.stdout
    assert "".join(lines[1:]).strip(), "no reply printed"


def check_info(ws: Workspace, ran: Ran) -> None:
    name = _lineage((ws.root / DEMO_RUN / "model").resolve())["name"]
    assert re.search(rf"^name\s+{re.escape(name)}$", ran.stdout, re.M), ran.stdout
    assert "# Scorecard" in ran.stdout and "held-out response loss" in ran.stdout


def check_derive_default(ws: Workspace, ran: Ran) -> None:
    lin = _derived(ws, ran, "runs/alpaca-tiny-tiny")  # default --out: runs/<recipe>-<base>-<profile>
    assert lin["recipe"]["profile"] == "tiny" and lin["parent"]["name"] == "tiny"


def check_derive_hf_folder(ws: Workspace, ran: Ran) -> None:
    lin = _derived(ws, ran, "runs/alpaca-my-llama-hf-folder-tiny")
    assert lin["parent"]["kind"] == "hf" and lin["parent"]["name"] == "my-llama-hf-folder"


def check_derive_gguf(ws: Workspace, ran: Ran) -> None:
    lin = _derived(ws, ran, "runs/mine")
    assert lin["parent"]["kind"] == "gguf" and Path(lin["parent"]["source"]).name == "model.gguf"
    assert [Path(d["path"]).name for d in lin["data"]] == ["my_alpaca.jsonl"]


def check_derive_full(ws: Workspace, ran: Ran) -> None:
    lin = _derived(ws, ran, "runs/alpaca-tiny-full")
    assert lin["recipe"]["profile"] == "full"


def check_resume(ws: Workspace, ran: Ran) -> None:
    before = ws.results["herd derive alpaca"]
    assert "done already" in ran.stdout  # the finished stage is not trained again
    assert _line_value(ran.stdout, "artifact:") == _line_value(before.stdout, "artifact:")


def check_eval_split_dev(ws: Workspace, ran: Ran) -> None:
    before = ws.results["herd derive alpaca"]
    assert "done already" in ran.stdout  # scoring the dev split trains nothing
    assert _line_value(ran.stdout, "artifact:") == _line_value(before.stdout, "artifact:")
    card = json.loads(((ws.root / _line_value(ran.stdout, "artifact:")) / "scorecard.json").read_text())
    assert card["extra"]["splits"] == {"held_out": 150, "dev": 50, "test": 100, "scored": "dev"}
    assert "--eval-split dev" in card["run"]["command"] and card["headline"]["n"] <= 50


def check_bases(ws: Workspace, ran: Ran) -> None:
    names = {ln.split()[0] for ln in ran.stdout.splitlines() if ln.strip()}
    assert {"smollm2", "tiny"} <= names, ran.stdout


def _in_demo_model(ws: Workspace, path: Path) -> None:
    # README: "Exports land in the derived model's folder (runs/NAME/model/export/)"
    export = (ws.root / DEMO_RUN / "model").resolve() / "export"
    assert path.resolve().is_relative_to(export), f"{path} is not under {export}"


def check_export_gguf(ws: Workspace, ran: Ran) -> None:
    gguf = ws.root / _line_value(ran.stdout, "gguf:")
    name = _lineage((ws.root / DEMO_RUN / "model").resolve())["name"]
    assert gguf.name == f"{name}.f16.gguf" and gguf.read_bytes()[:4] == b"GGUF"
    _in_demo_model(ws, gguf)
    modelfile = ws.root / _line_value(ran.stdout, "ollama:").split()[0]
    assert modelfile == gguf.parent / "Modelfile" and "FROM" in modelfile.read_text()


def check_export_hf(ws: Workspace, ran: Ran) -> None:
    hf = ws.root / _line_value(ran.stdout, "hf:")
    _in_demo_model(ws, hf)
    assert (hf / "config.json").is_file() and list(hf.glob("*.safetensors")), sorted(p.name for p in hf.iterdir())


def check_torchrun(ws: Workspace, ran: Ran) -> None:
    lin = _derived(ws, ran, "runs/alpaca-tiny-full-torchrun")
    assert lin["recipe"]["profile"] == "full" and lin["metrics"]["world_size"] == 2


# ---- the table ----------------------------------------------------------------------------------

@dataclass
class Entry:
    """How one README command runs here.

    ``argv``: the command as run; ``{herd}``, ``{python}``, ``{port}``, ``{key}`` are filled in.
    ``subs``: README token -> the tokens standing for it in ``argv`` (checked by
    test_table_runs_the_readme_argv: with these applied, the README's argv is a subsequence of ``argv``).
    ``why``: every rewrite and its reason. ``needs``: entries run first (their results are reused).
    ``files``: placeholder inputs made at the README's path in the workspace before the command runs.
    """

    argv: list[str] | None = None
    why: str = "as written"
    check: Callable[[Workspace, Ran], None] | None = None
    subs: dict[str, list[str]] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    stdin: str | None = None
    make_target: str | None = None  # run what `make -n TARGET` runs
    serve: bool = False
    ui: bool = False  # `herd ui`: started, its page and tree answered, stopped
    needs_llamacpp: bool = False
    skip: str | None = None


VENV_HERD = {".venv/bin/herd": ["{herd}"]}
PLAIN_HERD = {"herd": ["{herd}"]}
TINY_FAST = ["--base", "tiny", "--max-steps", "1"]

# README order: later commands use what earlier ones made.
TABLE: dict[str, Entry] = {
    "make demo": Entry(
        make_target="demo", check=check_demo,
        why="runs the herd lines of `make -n demo` (the setup lines are skipped: this venv is the one they make) "
            "with --base tiny --max-steps 1 added: the demo derives from the 135M SmolLM2 for ~20 minutes on 2 "
            "cores; the tiny base keeps the same recipe, data, stages, scorecard and output folder"),
    "make test": Entry(skip="`make test` runs this very suite (pytest -q), after building llama.cpp: running it "
                            "from inside the suite would recurse"),
    ".venv/bin/herd doctor": Entry(["{herd}", "doctor"], subs=VENV_HERD, check=check_doctor),
    ".venv/bin/herd chat runs/alpaca-smollm2-tiny": Entry(
        ["{herd}", "chat", DEMO_RUN], subs=VENV_HERD, needs=("make demo",), check=check_chat_interactive,
        stdin="Give three tips for staying healthy.\n/exit\n",
        why="interactive: one message then /exit on stdin"),
    '.venv/bin/herd chat runs/alpaca-smollm2-tiny -m "Give three tips for staying healthy."': Entry(
        ["{herd}", "chat", DEMO_RUN, "-m", "Give three tips for staying healthy."], subs=VENV_HERD,
        needs=("make demo",), check=check_chat_message),
    ".venv/bin/herd info runs/alpaca-smollm2-tiny": Entry(
        ["{herd}", "info", DEMO_RUN], subs=VENV_HERD, needs=("make demo",), check=check_info),
    "herd derive alpaca": Entry(
        ["{herd}", "derive", "alpaca", *TINY_FAST], subs=PLAIN_HERD, check=check_derive_default,
        why="--base tiny --max-steps 1: the recipe's base smollm2 trains for ~20 minutes on 2 cores"),
    "herd derive alpaca --base ./my-llama-hf-folder": Entry(
        ["{herd}", "derive", "alpaca", "--base", "./my-llama-hf-folder", "--max-steps", "1"], subs=PLAIN_HERD,
        files=("my-llama-hf-folder",), check=check_derive_hf_folder,
        why="./my-llama-hf-folder is a copy of the tiny base's HF folder (safetensors); --max-steps 1: a full "
            "tiny-profile run is 30 steps"),
    "herd derive alpaca --base ./model.gguf --data my_alpaca.jsonl --out runs/mine": Entry(
        ["{herd}", "derive", "alpaca", "--base", "./model.gguf", "--data", "my_alpaca.jsonl", "--out", "runs/mine",
         "--max-steps", "1"], subs=PLAIN_HERD, files=("model.gguf", "my_alpaca.jsonl"), needs=("make demo",),
        check=check_derive_gguf,
        why="./model.gguf is the demo's tiny artifact exported with herd.export.export_gguf (f16); my_alpaca.jsonl "
            "is 240 records of the shared alpaca_en_demo as JSONL; --max-steps 1"),
    "herd derive alpaca --profile full": Entry(
        ["{herd}", "derive", "alpaca", "--profile", "full", *TINY_FAST], subs=PLAIN_HERD, check=check_derive_full,
        why="--base tiny --max-steps 1: full is 3 epochs at batch 128 x 512 tokens from smollm2 (hours on a "
            "CPU); one full-size step of the tiny model still runs the published settings (~45 s)"),
    "herd derive alpaca --resume": Entry(
        ["{herd}", "derive", "alpaca", "--resume", *TINY_FAST], subs=PLAIN_HERD, needs=("herd derive alpaca",),
        check=check_resume,
        why="--base tiny --max-steps 1, as in `herd derive alpaca`, whose run it continues (finished: the stage "
            "is skipped; resuming a killed run is tested in test_resume_and_distributed.py)"),
    "herd derive alpaca --eval-split dev": Entry(
        ["{herd}", "derive", "alpaca", "--eval-split", "dev", *TINY_FAST], subs=PLAIN_HERD,
        needs=("herd derive alpaca",), check=check_eval_split_dev,
        why="--base tiny --max-steps 1, as in `herd derive alpaca`, whose trained stage it scores on dev"),
    "herd bases": Entry(["{herd}", "bases"], subs=PLAIN_HERD, check=check_bases),
    ".venv/bin/herd ui runs --port 7860": Entry(
        ["{herd}", "ui", "runs", "--port", "{port}"], subs={**VENV_HERD, "7860": ["{port}"]}, needs=("make demo",),
        ui=True, why="a free loopback port instead of 7860"),
    "herd export runs/alpaca-smollm2-tiny --to gguf --dtype f16": Entry(
        ["{herd}", "export", DEMO_RUN, "--to", "gguf", "--dtype", "f16"], subs=PLAIN_HERD, needs=("make demo",),
        check=check_export_gguf),
    "herd export runs/alpaca-smollm2-tiny --to hf": Entry(
        ["{herd}", "export", DEMO_RUN, "--to", "hf"], subs=PLAIN_HERD, needs=("make demo",), check=check_export_hf),
    "herd serve runs/alpaca-smollm2-tiny --backend llamacpp --port 8000 [--api-key KEY]": Entry(
        ["{herd}", "serve", DEMO_RUN, "--backend", "llamacpp", "--port", "{port}", "--api-key", "{key}"],
        subs={**PLAIN_HERD, "8000": ["{port}"], "KEY": ["{key}"]}, needs=("make demo",), serve=True,
        needs_llamacpp=True,
        why="a free loopback port instead of 8000; the optional --api-key is given (a test key), so the server "
            "must refuse a wrong key and answer the right one; skipped when llama-cpp-python is not importable"),
    "torchrun --standalone --nproc_per_node 2 -m herd.cli derive alpaca --profile full": Entry(
        ["{python}", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "herd.cli",
         "derive", "alpaca", "--profile", "full", *TINY_FAST, "--out", "runs/alpaca-tiny-full-torchrun"],
        subs={"torchrun": ["{python}", "-m", "torch.distributed.run"]}, check=check_torchrun,
        why="torchrun = this venv's python -m torch.distributed.run; --base tiny --max-steps 1 as for "
            "`herd derive alpaca --profile full`; --out: the default folder is that run's, whose finished "
            "stage would be skipped instead of trained by 2 ranks"),
}

# The README's Python API block, run with these substitutions (README text -> text run).
PYTHON_SUBS = [
    ('base="smollm2"', 'base="tiny"'),  # as for `herd derive alpaca`: smollm2 trains for ~20 minutes
    ('profile="tiny")', 'profile="tiny", max_steps=1)'),  # the same run as the CLI's: its stage is reused
]


# ---- the workspace ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workspace:
    """One temporary folder (the cwd of every command) and the results of the entries run so far."""

    def __init__(self, root: Path):
        self.root = root
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                        TRANSFORMERS_NO_ADVISORY_WARNINGS="1", PYTHONUNBUFFERED="1")
        self.results: dict[str, Ran] = {}
        self.converted_gguf: list[str] = []  # sha256s of GGUF bases herd converted into its cache

    # placeholder inputs, at the README's paths
    def make_file(self, name: str) -> None:
        target = self.root / name
        if target.exists():
            return
        if name == "my-llama-hf-folder":
            from herd.base import resolve_base

            shutil.copytree(resolve_base("tiny").path, target)
        elif name == "model.gguf":
            from herd.core.hashing import sha256_file
            from herd.export import export_gguf

            export_gguf((self.root / DEMO_RUN / "model").resolve(), target, "f16")
            self.converted_gguf.append(sha256_file(target))  # herd caches its conversion under this hash
        elif name == "my_alpaca.jsonl":
            from herd.core.paths import shared_data_dir

            # more records than the tiny profile holds out (150: dev 50, test 100), so some are left to train on
            records = json.loads((shared_data_dir() / "llamafactory_alpaca_en_demo" / "alpaca_en_demo.json").read_text())
            target.write_text("".join(json.dumps(r) + "\n" for r in records[:240]))
        else:
            raise AssertionError(f"no recipe for the placeholder {name!r}")

    def fill(self, argv: list[str], **extra: str) -> list[str]:
        values = {"{herd}": HERD, "{python}": sys.executable, **{f"{{{k}}}": v for k, v in extra.items()}}
        return [values.get(tok, tok) for tok in argv]

    def run(self, argv: list[str], stdin: str | None = None) -> Ran:
        proc = subprocess.run(argv, cwd=self.root, env=self.env, input=stdin if stdin is not None else "",
                              capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
        return Ran([argv], proc.returncode, proc.stdout, proc.stderr)

    def run_entry(self, key: str) -> Ran:
        """Run a table entry once (its prerequisites first); a failed prerequisite fails its dependants."""
        if key in self.results:
            return self.results[key]
        entry = TABLE[key]
        for need in entry.needs:
            ran = self.run_entry(need)
            if ran.returncode != 0:
                pytest.fail(f"needs {need!r}, which failed:\n{ran.tail()}")
        for name in entry.files:
            self.make_file(name)
        if entry.make_target:
            ran = self.run_make(entry.make_target)
        elif entry.serve:
            ran = self.run_server(entry)
        elif entry.ui:
            ran = self.run_ui(entry)
        else:
            ran = self.run(self.fill(entry.argv), entry.stdin)
        self.results[key] = ran
        return ran

    def run_make(self, target: str) -> Ran:
        """What `make -n TARGET` runs: herd derive lines get the tiny base and one step; setup lines (the
        venv this test already runs in) are skipped; echo lines are only messages."""
        # under `make test` the environment carries the outer make's MAKELEVEL/MAKEFLAGS, which would make
        # this dry run print "Entering directory" lines: run it as a top-level make
        env = {k: v for k, v in self.env.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
        dry = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        runs, outs, errs = [], [], []
        for line in dry.stdout.splitlines():
            argv = shlex.split(line, comments=True)
            if not argv or argv[0] in ("echo", "touch") or argv[0].endswith("pip") or argv[1:3] == ["-m", "venv"]:
                continue
            assert argv[0] == ".venv/bin/herd", f"`make -n {target}` runs {line!r}; the test cannot run it"
            argv[0] = HERD
            if argv[1] == "derive":
                if "--base" in argv:
                    argv[argv.index("--base") + 1] = "tiny"
                else:
                    argv += ["--base", "tiny"]
                argv += ["--max-steps", "1"]
            ran = self.run(argv)
            runs.append(argv)
            outs.append(ran.stdout)
            errs.append(ran.stderr)
            if ran.returncode != 0:
                return Ran(runs, ran.returncode, "".join(outs), "".join(errs))
        assert runs, f"`make -n {target}` runs no herd command:\n{dry.stdout}"
        return Ran(runs, 0, "".join(outs), "".join(errs))

    @contextmanager
    def started(self, argv: list[str], log: Path, ready: Callable[[], bool]) -> Iterator[subprocess.Popen]:
        """``argv`` in its own session (output to ``log``), yielded once ``ready()`` (an HTTP probe) is true,
        or as it is when it exits first; stopped afterwards."""
        import httpx

        with open(log, "w") as fh:
            proc = subprocess.Popen(argv, cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + SERVE_START_S
            while proc.poll() is None:
                try:
                    if ready():
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"{argv[1]} not ready in {SERVE_START_S} s:\n{log.read_text()}"
                time.sleep(0.5)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what this test started
                    proc.wait(timeout=30)

    def run_server(self, entry: Entry) -> Ran:
        """Start the server on a free loopback port, wait for /v1/models, one chat completion, stop it."""
        import httpx
        import openai

        port = str(_free_port())
        argv = self.fill(entry.argv, port=port, key=API_KEY)
        log = self.root / f"serve-{port}.log"
        url = f"http://127.0.0.1:{port}/v1"

        def ready() -> bool:
            return httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {API_KEY}"},
                             timeout=5).status_code == 200

        with self.started(argv, log, ready) as proc:
            if proc.poll() is not None:
                return Ran([argv], proc.returncode or 1, "", log.read_text())
            client = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0, timeout=120)
            models = client.models.list().data
            name = _lineage((self.root / DEMO_RUN / "model").resolve())["name"]
            assert [m.id for m in models] == [name]
            reply = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Give three tips for staying healthy."}],
                max_tokens=8, temperature=0)
            choice = reply.choices[0]
            assert choice.finish_reason in ("stop", "length") and choice.message.content is not None
            assert reply.usage.completion_tokens <= 8
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url, api_key="wrong-key", max_retries=0, timeout=30).models.list()
            out = json.dumps({"models": [m.id for m in models], "reply": choice.message.content})
        served = log.read_text()
        backend = entry.argv[entry.argv.index("--backend") + 1] if "--backend" in entry.argv else "transformers"
        assert f"({backend}," in served, f"the server did not say it serves with {backend}:\n{served}"
        return Ran([argv], 0, out, served)

    def run_ui(self, entry: Entry) -> Ran:
        """Start ``herd ui`` on a free loopback port, wait for its page, check the tree lists the demo run."""
        import httpx

        port = str(_free_port())
        argv = self.fill(entry.argv, port=port)
        log = self.root / f"ui-{port}.log"
        url = f"http://127.0.0.1:{port}"
        with self.started(argv, log, lambda: httpx.get(url + "/", timeout=5).status_code == 200) as proc:
            if proc.poll() is not None:
                return Ran([argv], proc.returncode or 1, "", log.read_text())
            assert "<title>herd ui</title>" in httpx.get(url + "/", timeout=30).text
            tree = httpx.get(url + "/api/tree", timeout=60).json()
            paths = [n["path"] for n in tree["nodes"] if n["kind"] == "artifact"]
            assert any(p.startswith("alpaca-smollm2-tiny/") for p in paths), paths
        return Ran([argv], 0, json.dumps(paths), log.read_text())

    def cleanup(self) -> None:
        """Remove the cache folders herd made converting this workspace's throwaway GGUF base."""
        from herd.core.paths import cache_dir

        for sha in self.converted_gguf:
            folder = cache_dir() / "bases" / f"model-{sha[:12]}"
            if folder.is_dir():
                shutil.rmtree(folder)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    w = Workspace(tmp_path_factory.mktemp("readme"))
    yield w
    w.cleanup()


def _llamacpp_importable() -> bool:
    # in a child: a bad llama.cpp build can kill the interpreter that imports it
    return subprocess.run([sys.executable, "-c", "import llama_cpp"], capture_output=True,
                          timeout=120).returncode == 0


# ---- the tests ----------------------------------------------------------------------------------

README_TEXT = README.read_text()
COMMANDS = readme_commands(README_TEXT)


def test_readme_parser_finds_commands_not_output():
    assert "make demo" in COMMANDS and "herd bases" in COMMANDS
    assert not any(c.startswith(("runs/", "src/", "01-sft", "config.json")) for c in COMMANDS)
    assert all("#" not in c for c in COMMANDS)  # comments stripped
    sample = "```\nruns/x/\n  model -> 01\n```\n```bash\nherd a b   # note\n```\n```\nherd c\n```\n"
    assert readme_commands(sample) == ["herd a b", "herd c"]
    assert readme_argv("herd serve X --port 8000 [--api-key KEY]")[-2:] == ["--api-key", "KEY"]
    assert strip_comment('herd chat x -m "a # b"  # c') == 'herd chat x -m "a # b"'


def test_every_readme_command_has_a_table_entry():
    missing = [c for c in COMMANDS if c not in TABLE]
    assert not missing, ("README commands with no entry in TABLE (tests/test_readme_commands.py): add one "
                         f"that runs them: {missing}")


def test_every_table_entry_is_a_readme_command():
    stale = [k for k in TABLE if k not in COMMANDS]
    assert not stale, f"TABLE entries that are no longer README commands (update or remove them): {stale}"


@pytest.mark.parametrize("key", [k for k, e in TABLE.items() if e.argv is not None])
def test_table_runs_the_readme_argv(key):
    """A rewrite may add arguments or substitute a README token (``subs``), never drop one."""
    entry = TABLE[key]
    want = [t for tok in readme_argv(key) for t in entry.subs.get(tok, [tok])]
    it = iter(entry.argv)
    missing = [tok for tok in want if not any(tok == got for got in it)]
    assert not missing, f"{entry.argv} does not contain the README's {want} in order (missing {missing})"


@pytest.mark.slow
@pytest.mark.parametrize("key", list(TABLE))
def test_readme_command(ws, key):
    if key not in COMMANDS:
        pytest.skip("no longer in the README (test_every_table_entry_is_a_readme_command fails)")
    entry = TABLE[key]
    if entry.skip:
        pytest.skip(entry.skip)
    if entry.needs_llamacpp and not _llamacpp_importable():
        pytest.skip("llama-cpp-python is not importable here (`make setup-llamacpp` builds it)")
    ran = ws.run_entry(key)
    assert ran.returncode == 0, ran.tail()
    if entry.check:
        try:
            entry.check(ws, ran)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{ran.tail()}") from e


@pytest.mark.slow
def test_readme_python_block(ws):
    blocks = readme_python_blocks(README_TEXT)
    assert len(blocks) == 1, f"the README has {len(blocks)} python blocks; this test knows one"
    code = blocks[0]
    for old, new in PYTHON_SUBS:
        assert old in code, f"the README's python block no longer contains {old!r}: update PYTHON_SUBS"
        code = code.replace(old, new)
    cli = ws.run_entry("herd derive alpaca")
    assert cli.returncode == 0, cli.tail()
    ran = ws.run([sys.executable, "-c", code])
    assert ran.returncode == 0, ran.tail()
    # the API mirrors the CLI: the same inputs are the same run, whose finished stage is reused
    assert "done already" in ran.stdout, ran.tail()
    artifact = _line_value(cli.stdout, "artifact:")
    assert artifact in ran.stdout and "held-out response loss" in ran.stdout, ran.tail()
    name = _lineage(ws.root / artifact)["name"]
    assert re.search(rf"^name\s+{re.escape(name)}$", ran.stdout, re.M), ran.tail()
