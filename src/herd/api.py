"""The Python API; it mirrors the CLI one function per command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from herd.artifacts import artifact_path, artifact_template  # noqa: F401  (part of the Python API)
from herd.core.errors import HerdError
from herd.derive import DeriveResult
from herd.derive import derive as _derive


def derive(recipe: str, *, base: str | None = None, profile: str = "tiny", data: list[str] | None = None,
           out: str | Path | None = None, resume: bool = False, max_steps: int | None = None,
           overrides: dict | None = None, progress: bool = True,
           report_to: str | list[str] | None = None) -> DeriveResult:
    """Run a recipe end to end; returns the artifact path and its scorecard. ``report_to``:
    ``"tensorboard,mlflow,wandb"`` (any of them) also receive the training metrics."""
    return _derive(recipe, base=base, profile=profile, data=data, out=out, resume=resume, max_steps=max_steps,
                   overrides=overrides, progress=progress, report_to=report_to)


class ChatSession:
    """A conversation kept in the artifact's own template; generation stops at the template's stops."""

    def __init__(self, artifact: str | Path, *, system: str | None = None, max_new_tokens: int = 256,
                 temperature: float = 0.0):
        from herd.base import load_model, load_tokenizer, resolve_base

        ref = resolve_base(artifact_path(artifact))
        self.tokenizer = load_tokenizer(ref)
        self.model = load_model(ref)
        self.template = artifact_template(ref.path, self.tokenizer)
        self.system, self.max_new_tokens, self.temperature = system, max_new_tokens, temperature
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = []
        if self.system and "system" in self.template.roles:
            self.messages.append({"role": "system", "content": self.system})

    def say(self, text: str) -> str:
        from herd.engine.generation import generate

        self.messages.append({"role": "user", "content": text})
        prompt = self.template.prompt(self.messages, self.tokenizer)
        reply = generate(self.model, self.tokenizer, [prompt], max_new_tokens=self.max_new_tokens,
                         temperature=self.temperature, stop=self.template.stop_strings(self.tokenizer))[0]
        self.messages.append({"role": "assistant", "content": reply})
        return reply


def chat(artifact: str | Path, *, message: list[str] | None = None, max_new_tokens: int = 256,
         temperature: float = 0.0, system: str | None = None) -> int:
    """Talk to an artifact: one-shot with ``message`` (a list of turns), else an interactive loop."""
    session = ChatSession(artifact, system=system, max_new_tokens=max_new_tokens, temperature=temperature)
    if message:
        for m in message:
            print(f"> {m}")
            print(session.say(m))
        return 0
    print(f"herd chat — template '{session.template.name}'. /reset clears, /exit or Ctrl-D quits.")
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            session.reset()
            continue
        if line.strip():
            print(session.say(line), flush=True)
            sys.stdout.flush()


def info(artifact: str | Path, *, as_json: bool = False) -> str:
    """Lineage and scorecard of an artifact, as text or JSON."""
    from herd.artifacts import locate_artifact, read_lineage

    path = locate_artifact(artifact)
    lin = read_lineage(path)
    card_md = (path / "scorecard.md").read_text() if (path / "scorecard.md").is_file() else None
    if as_json:
        card = json.loads((path / "scorecard.json").read_text()) if (path / "scorecard.json").is_file() else None
        return json.dumps({"lineage": lin, "scorecard": card}, indent=2)
    p, r, t, s = lin.get("parent") or {}, lin.get("recipe") or {}, lin.get("template") or {}, lin.get("stage") or {}
    lines = [f"artifact   {path}", f"name       {lin['name']}", f"id         {lin['id'][:16]}…",
             f"created    {lin['created']}",
             f"parent     {p.get('name')} ({p.get('kind')}, sha256 {str(p.get('sha256'))[:16]}…)",
             f"recipe     {r.get('name')} / profile {r.get('profile')}" if r else "recipe     -",
             f"stage      {s.get('name')} ({s.get('kind')})" if s else "stage      -",
             f"template   {t.get('name')}", f"weights    sha256 {str(lin.get('weights_sha256'))[:16]}…",
             f"herd       {lin['herd']['version']} @ {str(lin['herd']['git_commit'])[:10]}"
             + (" (dirty)" if lin["herd"].get("git_dirty") else "")]
    for d in lin.get("data", []):
        lines.append(f"data       {d['name'] if 'name' in d else d['path']}: {d.get('records')} records, "
                     f"sha256 {d['sha256'][:16]}…")
    if card_md:
        lines += ["", card_md]
    return "\n".join(lines)


def bases() -> list[dict]:
    """The named bases and whether they are ready here."""
    from herd.base import named_bases, smollm2_gguf_path

    rows = []
    for name, desc in named_bases().items():
        status = "available"
        if name in ("smollm2", "tiny"):
            try:
                smollm2_gguf_path()
            except HerdError:
                status = "not installed"
        rows.append({"name": name, "description": desc, "status": status})
    return rows
