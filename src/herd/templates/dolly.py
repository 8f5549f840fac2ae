"""Dolly v2 (Databricks): training/consts.py formats, byte for byte.

Dossier §7.3-7.4: ``Input:`` has no ``###``; the prompt ends with ``### Response:\\n``; the target is
``{response}\\n\\n### End`` with no EOS (pad = eos made Dolly's collator mask every EOS, so the model
learns to stop on ``### End``, which is this template's stop string). The record's context travels as
the user message's ``input`` key (the key Alpaca uses, so the two formats read each other's records).
Dolly is single-turn; several exchanges render as consecutive Dolly blocks joined by a blank line
(herd's extension, needed so the ``### End`` and the next ``Below`` never share a BPE token).
"""

from herd.templates.base import Template

INTRO_BLURB = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
INSTRUCTION_KEY, INPUT_KEY, RESPONSE_KEY, END_KEY = "### Instruction:", "Input:", "### Response:", "### End"
# Added to the tokenizer by Dolly's trainer (load_tokenizer); a training stage may add them too.
SPECIAL_TOKENS = (END_KEY, INSTRUCTION_KEY, RESPONSE_KEY + "\n")


def _jinja_literal(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


JINJA = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('dolly template: roles must alternate user/assistant (no system role)') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{{ " + _jinja_literal(INTRO_BLURB + "\n\n" + INSTRUCTION_KEY + "\n") + " + message['content'] + '\\n\\n' }}"
    "{% if message['input'] is defined and message['input'] %}"
    "{{ " + _jinja_literal(INPUT_KEY + "\n") + " + message['input'] + '\\n\\n' }}{% endif %}"
    "{{ " + _jinja_literal(RESPONSE_KEY + "\n") + " }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['train'] is not defined or message['train'] %}"
    "{% generation %}{{ message['content'] + " + _jinja_literal("\n\n" + END_KEY) + " }}{% endgeneration %}"
    "{% else %}{{ message['content'] + " + _jinja_literal("\n\n" + END_KEY) + " }}{% endif %}"
    "{% else %}{{ raise_exception('dolly template: role ' + message['role'] + ' is not supported "
    "(only user/assistant)') }}"
    "{% endif %}"
    "{% endfor %}"
)

DOLLY = Template(
    name="dolly",
    jinja=JINJA,
    description="Dolly v2 instruction format (Input: without ###), target = response + '\\n\\n### End'",
    source="recipes.md §7.3-7.4 (databrickslabs/dolly training/consts.py, trainer.py)",
    stop=(END_KEY,),
    roles=("user", "assistant"),
    extra={"special_tokens": SPECIAL_TOKENS},
)
