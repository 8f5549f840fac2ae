"""Vicuna v1.1 (also v1.3, v1.5): FastChat's ``vicuna_v1.1`` conversation, SeparatorStyle.ADD_COLON_TWO.

Dossier §2.3: ``system + " "``, then ``USER: {u} `` and ``ASSISTANT: {a}</s>`` for every exchange; an
open assistant slot is ``ASSISTANT:`` with no trailing space. FastChat writes ``</s>``; herd writes the
tokenizer's ``eos_token`` (dossier §10.4), so the stop token is a single special id.

Trained (dossier §2.4, every assistant turn): ``" " + reply + eos``. The space after ``ASSISTANT:``
sits inside the generation block because byte-level BPE (and SentencePiece) fuse it into the reply's
first token; the generation prompt ends at ``ASSISTANT:`` so the model produces exactly that space.
An assistant message with ``"train": false`` is rendered the same but not trained (GAtt, §5.2.6).
"""

from herd.templates.base import Template

DEFAULT_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_REPLY = "{{ ' ' + message['content'] + eos_token }}"

JINJA = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '" + DEFAULT_SYSTEM.replace("'", "\\'") + "' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{{ system + ' ' }}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('vicuna_v1.1 template: roles must alternate user/assistant after an optional "
    "system message') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT:' }}"
    "{% if message['train'] is not defined or message['train'] %}"
    "{% generation %}" + _REPLY + "{% endgeneration %}"
    "{% else %}" + _REPLY + "{% endif %}"
    "{% else %}{{ raise_exception('vicuna_v1.1 template: role ' + message['role'] + ' is not supported "
    "(only system/user/assistant)') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

VICUNA = Template(
    name="vicuna_v1.1",
    jinja=JINJA,
    description="Vicuna v1.1/v1.3/v1.5 (FastChat vicuna_v1.1); trains every assistant reply + EOS",
    source="recipes.md §2.3-2.4 (lm-sys/FastChat conversation.py vicuna_v1.1, train.py preprocess)",
    roles=("system", "user", "assistant"),
)
