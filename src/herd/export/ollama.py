"""Ollama Modelfile: the artifact's template translated into Ollama's Go template, plus its stops.

Ollama does not read the GGUF's jinja; it needs a Go ``TEMPLATE``. herd derives it from the one
template definition instead of keeping a second copy: rendering a conversation one message at a time
gives each role's block (text around a sentinel content), the text a conversation starts with when it
has no system message (Vicuna's default system prompt) and the generation prompt. The translation is
accepted only if re-assembling those blocks reproduces the template's own renders exactly; templates
whose blocks depend on their neighbours (Llama-2-Chat folds the system prompt into the first [INST])
are refused with an error rather than approximated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from herd.core.errors import HerdError
from herd.templates import Template, TemplateError

_CONV = ("user", "assistant", "user", "assistant", "user")


@dataclass
class Blocks:
    """A template as Ollama can express it: per-role (prefix, suffix), a no-system head, a generation prompt."""

    roles: dict[str, tuple[str, str]] = field(default_factory=dict)
    head: str = ""  # emitted when the first message is not a system message
    gen: str = ""

    def render(self, messages: list[dict]) -> str:
        """What Ollama will send the model (mirrors :meth:`go` exactly)."""
        out = self.head if not messages or messages[0]["role"] != "system" else ""
        for m in messages:
            pre, suf = self.roles[m["role"]]
            out += pre + m["content"] + suf
        return out + self.gen

    def go(self) -> str:
        parts = []
        if self.head:
            parts.append(f'{{{{ if ne (index .Messages 0).Role "system" }}}}{_literal(self.head)}{{{{ end }}}}')
        parts.append("{{ range .Messages }}")
        for i, (role, (pre, suf)) in enumerate(self.roles.items()):
            parts.append(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
                         f"{_literal(pre)}{{{{ .Content }}}}{_literal(suf)}")
        parts.append("{{ end }}{{ end }}")
        parts.append(_literal(self.gen))
        return "".join(parts)


def _literal(text: str) -> str:
    if '"""' in text or "{{" in text:
        raise HerdError('template text contains """ or {{, which an Ollama TEMPLATE cannot hold')
    return text


def _sentinel(i: int) -> str:
    return f"\x00HERD{i}\x00"


def blocks(template: Template, tokenizer) -> Blocks:
    """Split ``template`` into Ollama blocks, or raise HerdError if it cannot be expressed that way."""
    bos = getattr(tokenizer, "bos_token", None) or ""
    strip_bos = bool(bos) and template.chat_template(tokenizer).startswith("{{ bos_token }}")

    def render(msgs: list[dict], gen: bool = False) -> str:
        text = template.render_text(msgs, tokenizer, add_generation_prompt=gen)[0]
        # llama.cpp and Ollama add BOS themselves when the GGUF says add_bos_token
        return text[len(bos):] if strip_bos and text.startswith(bos) else text

    def refuse(why: str) -> HerdError:
        return HerdError(f"template '{template.name}' has no exact Ollama equivalent ({why}); run the GGUF "
                         "with llama.cpp, which reads the jinja template stored in it")

    out = Blocks()
    try:
        conv = [{"role": r, "content": _sentinel(i)} for i, r in enumerate(_CONV)]
        prev = out.head = render([])
        for k, m in enumerate(conv, 1):
            text = render(conv[:k])
            if not text.startswith(prev) or text.count(m["content"]) != 1:
                raise refuse("a message changes the text before it")
            pre, suf = text[len(prev):].split(m["content"])
            if out.roles.setdefault(m["role"], (pre, suf)) != (pre, suf):
                raise refuse(f"the {m['role']} block differs between turns")
            prev = text
        out.gen = render(conv, gen=True)[len(prev):]
        for role in (r for r in template.roles if r not in ("system", "user", "assistant")):
            try:  # other roles (ChatML's tool): one more message after the conversation
                text = render(conv + [{"role": role, "content": _sentinel(8)}])
            except TemplateError:
                continue
            if text.startswith(prev) and text.count(_sentinel(8)) == 1:
                out.roles[role] = tuple(text[len(prev):].split(_sentinel(8)))
        if "system" in template.roles:
            text = render([{"role": "system", "content": _sentinel(9)}])
            pre, suf = text.split(_sentinel(9)) if text.count(_sentinel(9)) == 1 else (None, None)
            if pre is None:
                raise refuse("the system message is not rendered verbatim")
            out.roles = {"system": (pre, suf), **out.roles}
    except TemplateError as e:
        raise refuse(str(e)) from None
    extra = [r for r in out.roles if r not in ("system", "user", "assistant")]
    for with_system in (False, True) if "system" in out.roles else (False,):
        msgs = ([{"role": "system", "content": "Be brief."}] if with_system else []) + [
            {"role": r, "content": f"message {i}"} for i, r in enumerate(_CONV + tuple(extra))]
        if out.render(msgs) != render(msgs, gen=True):
            raise refuse("re-assembled blocks differ from the template's render")
    return out


def go_template(template: Template, tokenizer) -> str:
    """Ollama's TEMPLATE for ``template``."""
    return blocks(template, tokenizer).go()


def modelfile(gguf_name: str, template: Template, tokenizer, lineage: dict) -> str:
    stops = template.stop_strings(tokenizer)
    lines = [f"# {lineage['name']}: derived by herd from {(lineage.get('parent') or {}).get('name')} "
             f"(lineage {str(lineage.get('id'))[:16]}, template {template.name})",
             f"FROM ./{gguf_name}",
             f'TEMPLATE """{go_template(template, tokenizer)}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops if '"' not in s]
    return "\n".join(lines) + "\n"


def write_modelfile(artifact: str | Path, gguf_path: str | Path) -> Path:
    """Write ``Modelfile`` next to the GGUF (``ollama create NAME -f Modelfile`` in that folder)."""
    from herd.artifacts import atomic_write_text, read_lineage
    from herd.base import load_tokenizer
    from herd.templates import get_template

    lineage = read_lineage(artifact)
    if not lineage.get("template"):
        raise HerdError(f"{artifact}: lineage has no template; an Ollama Modelfile needs one")
    template = get_template(lineage["template"]["name"])
    tok = load_tokenizer(artifact)
    gguf_path = Path(gguf_path)
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    out = gguf_path.parent / "Modelfile"
    atomic_write_text(out, modelfile(gguf_path.name, template, tok, lineage))
    return out
