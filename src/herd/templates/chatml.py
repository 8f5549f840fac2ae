"""ChatML, SmolLM2's own format: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``.

Trained: each assistant content plus its ``<|im_end|>``. With a system message the render equals
SmolLM2-Instruct's own chat template byte for byte (SmolLM2 adds a default system prompt when none is
given; herd's chatml does not invent one).
"""

from herd.templates.base import Template

JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% if message['train'] is not defined or message['train'] %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHATML = Template(
    name="chatml",
    jinja=JINJA,
    description="ChatML (SmolLM2-Instruct's format); trains assistant content + <|im_end|>",
    source="SmolLM2-135M-Instruct tokenizer chat_template",
    stop=("<|im_end|>",),
    uses_bos=False,
    roles=("system", "user", "assistant", "tool"),
)
