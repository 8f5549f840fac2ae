"""Alpaca (Stanford, 2023): the two PROMPT_DICT strings of train.py, byte for byte.

Dossier §1.3: the prompt ends with ``### Response:`` and NO newline; the target is ``{output}{eos}``
concatenated directly. The record's ``input`` travels as an extra key of the user message; without it
the no-input variant is used (as the Alpaca demo does at inference). Several exchanges render as
consecutive Alpaca blocks, each trained on its output + EOS.
"""

from herd.templates.base import Template

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def _jinja_literal(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _jinja_prompt(s: str) -> str:
    head, rest = s.split("{instruction}")
    if "{input}" in rest:
        mid, tail = rest.split("{input}")
        return (f"{_jinja_literal(head)} + message['content'] + {_jinja_literal(mid)} + message['input'] + "
                f"{_jinja_literal(tail)}")
    return f"{_jinja_literal(head)} + message['content'] + {_jinja_literal(rest)}"


JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if message['input'] is defined and message['input'] %}{{ " + _jinja_prompt(PROMPT_INPUT) + " }}"
    "{% else %}{{ " + _jinja_prompt(PROMPT_NO_INPUT) + " }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['train'] is not defined or message['train'] %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% else %}{{ raise_exception('alpaca template: role ' + message['role'] + ' is not supported "
    "(only user/assistant)') }}"
    "{% endif %}"
    "{% endfor %}"
)

ALPACA = Template(
    name="alpaca",
    jinja=JINJA,
    description="Stanford Alpaca instruction format (with and without input), target = output + EOS",
    source="recipes.md §1.3 (tatsu-lab/stanford_alpaca train.py PROMPT_DICT)",
    roles=("user", "assistant"),
)
