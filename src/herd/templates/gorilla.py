"""Gorilla: the prompt of Gorilla's batch evaluation, ``"###USER: " + prompt + "###ASSISTANT: "``.

Dossier §8.3 gives this string byte for byte (gorilla/inference/gorilla_eval.py): it produced the
released response files that herd's AST evaluator is checked against. The dossier does not give the
training-time conversation format, so herd trains in the same format it evaluates in (one template
everywhere): the target is the APIBench answer + EOS, and nothing of the prompt is trained. Several
exchanges render as consecutive ``###USER:``/``###ASSISTANT:`` pairs, each reply trained.

The prompt ends with a space that byte-level BPE would fuse with the answer's first character (`` {``);
herd tokenizes prompt and answer apart, exactly as generation meets them, so training and inference
agree token for token (the ids differ from tokenizing the whole string at once at that one boundary).
"""

from herd.templates.base import Template

USER, ASSISTANT = "###USER: ", "###ASSISTANT: "

JINJA = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('gorilla template: roles must alternate user/assistant, starting with user') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '" + USER + "' + message['content'] + '" + ASSISTANT + "' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['train'] is not defined or message['train'] %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% else %}{{ raise_exception('gorilla template: role ' + message['role'] + ' is not supported "
    "(only user/assistant)') }}"
    "{% endif %}"
    "{% endfor %}"
)

GORILLA = Template(
    name="gorilla",
    jinja=JINJA,
    description="Gorilla batch-eval format ###USER: {prompt}###ASSISTANT: {answer}<eos>; trains the answer + EOS",
    source="recipes.md §8.3 (ShishirPatil/gorilla gorilla/inference/gorilla_eval.py)",
    roles=("user", "assistant"),
)
