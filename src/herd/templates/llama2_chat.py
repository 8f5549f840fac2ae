"""Llama-2-Chat: Meta's ``chat_completion`` format (llama/generation.py), byte for byte.

Dossier §5.3: a system message is merged into the first user turn as ``<<SYS>>\\n{system}\\n<</SYS>>\\n\\n``;
every completed exchange is ``BOS + "[INST] {user.strip()} [/INST] {answer.strip()} " + EOS`` and the
final user turn ``BOS + "[INST] {user.strip()} [/INST]"``. BOS and EOS are the tokenizer's special
tokens (one id each), emitted by the template for every exchange, so ``uses_bos`` is off.

Trained (§5.4, loss zeroed on user-prompt tokens): ``" " + answer.strip() + " " + EOS`` of every
assistant turn. An assistant message with ``"train": false`` is rendered but not trained: Ghost
Attention zeroes the loss of all earlier turns that way (§5.2.6, see ``herd.data.transforms.ghost_attention``).
"""

from herd.templates.base import Template

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
UNSAFE_REPLY = "Error: special tags are not allowed as part of the prompt."

# Meta's original default system prompt (removed in commit a971c41); note the double space.
DEFAULT_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while "
    "being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, "
    "dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive "
    "in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why "
    "instead of answering something not correct. If you don't know the answer to a question, please "
    "don't share false information."
)

_REPLY = "{{ ' ' + message['content'].strip() + ' ' + eos_token }}"

JINJA = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% if messages | length < 2 or messages[1]['role'] != 'user' %}"
    "{{ raise_exception('llama2_chat template: a system message must be followed by a user message') }}"
    "{% endif %}"
    "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = none %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('llama2_chat template: roles must alternate user/assistant after an optional "
    "system message') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system is not none %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['train'] is not defined or message['train'] %}"
    "{% generation %}" + _REPLY + "{% endgeneration %}"
    "{% else %}" + _REPLY + "{% endif %}"
    "{% else %}{{ raise_exception('llama2_chat template: role ' + message['role'] + ' is not supported "
    "(only system/user/assistant)') }}"
    "{% endif %}"
    "{% endfor %}"
)

LLAMA2_CHAT = Template(
    name="llama2_chat",
    jinja=JINJA,
    description="Llama-2-Chat [INST]/<<SYS>> format with BOS/EOS ids around every exchange",
    source="recipes.md §5.3-5.4 (meta-llama/llama generation.py chat_completion)",
    uses_bos=False,  # the template emits bos_token itself, once per exchange
    roles=("system", "user", "assistant"),
)


def special_tag_violations(messages: list[dict]) -> list[str]:
    """Meta's ``chat_completion`` answers :data:`UNSAFE_REPLY` when a message contains these tags."""
    return [tag for m in messages for tag in SPECIAL_TAGS if tag in str(m.get("content", ""))]
