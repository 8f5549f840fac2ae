"""The template registry: templates are found by name (stored in every artifact), never guessed."""

from __future__ import annotations

from herd.core.errors import HerdError
from herd.templates.alpaca import ALPACA
from herd.templates.base import IGNORE_INDEX, Rendered, Template, TemplateError
from herd.templates.chatml import CHATML
from herd.templates.dolly import DOLLY
from herd.templates.gorilla import GORILLA
from herd.templates.llama2_chat import LLAMA2_CHAT
from herd.templates.llama_guard import LLAMA_GUARD
from herd.templates.vicuna import VICUNA

TEMPLATES: dict[str, Template] = {t.name: t for t in (ALPACA, CHATML, VICUNA, LLAMA2_CHAT, DOLLY, LLAMA_GUARD, GORILLA)}


def register(template: Template) -> Template:
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise HerdError(f"unknown template '{name}'; known: {', '.join(sorted(TEMPLATES))}") from None


__all__ = ["IGNORE_INDEX", "TEMPLATES", "Rendered", "Template", "TemplateError", "get_template", "register"]
