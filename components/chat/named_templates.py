"""Chat templates chosen by name (sft.chat_template). Light: imported by the config."""
from __future__ import annotations

# chat templates chosen by name (sft.chat_template); each starts with the tokenizer's BOS, as the
# project's own template does (the pretrained model saw it first in every document)
TEMPLATES = {
    "chatml": ("{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
               "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "llama3": ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' "
               "+ m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "zephyr": ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
}
TEMPLATE_NAMES = ("project", *TEMPLATES)  # project: the tokenizer's own (the tokenizer stage's)
