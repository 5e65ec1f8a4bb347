"""Chat templates chosen by name or read from a Jinja file (sft.chat_template). Light: imported by the config
(transformers only to check a file)."""
from __future__ import annotations

from pathlib import Path

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

# what a template file must render (checked when the config is built, before any stage runs)
PROBE = [{"role": "system", "content": "PROBE-SYSTEM"}, {"role": "user", "content": "PROBE-QUESTION"},
         {"role": "assistant", "content": "PROBE-ANSWER"}]


def template_text(value: str) -> str | None:
    """The Jinja source sft.chat_template names: a named template's, a file's content, or None for project
    (the tokenizer keeps its own)."""
    if value == "project":
        return None
    return TEMPLATES[value] if value in TEMPLATES else Path(value).expanduser().read_text()


def template_problem(value: str) -> str | None:
    """Why sft.chat_template cannot be used (None: it can): not a name and no readable file, or a file whose
    template does not render the probe conversation with each answer right after its generation prompt
    (what the assistant-only mask relies on, components/chat/template.py)."""
    if value in TEMPLATE_NAMES:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        return f"neither a template name ({', '.join(TEMPLATE_NAMES)}) nor a file: {path} not found"
    try:
        source = path.read_text()
        from transformers.utils.chat_template_utils import render_jinja_template  # only for a file: heavy

        def render(messages: list[dict], prompt: bool) -> str:
            rendered = render_jinja_template([messages], chat_template=source, add_generation_prompt=prompt,
                                             bos_token="<s>", eos_token="</s>")
            return rendered[0][0] if isinstance(rendered, tuple) else rendered[0]

        full, prefix = render(PROBE, False), render(PROBE[:2], True)
    except Exception as err:  # a Jinja syntax error, an undefined name, raise_exception(...) in the template
        return f"{path} does not render a test conversation: {type(err).__name__}: {err}"
    missing = [m["content"] for m in PROBE if m["content"] not in full]
    if missing:
        return f"{path} renders a test conversation without {missing}: it must render every turn's content"
    if not (full.startswith(prefix) and full[len(prefix):].lstrip().startswith("PROBE-ANSWER")):
        return (f"{path}: the answer is not rendered right after the generation prompt (add_generation_prompt), "
                "so assistant tokens cannot be masked")
    return None
