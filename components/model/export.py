"""An exported model directory that any runtime uses as it was trained.

Plain `model.generate`, `pipeline("text-generation")`, vLLM and TGI read only the files: so the
generation config stops where the chat template ends a turn (and at eos), the tokenizer knows
the model's context, the tokenizer config carries no load-time flags of ours, and every file is
readable by others (0644).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import components.model.registry  # noqa: F401  registers alibi_llama: a loop that exports loads it too
from components.chat.template import end_of_turn

FILE_MODE = 0o644  # save_pretrained's atomic writes leave safetensors 0600: unreadable to a serving user
LOAD_TIME_KEYS = ("local_files_only", "is_local")  # how this process loaded the tokenizer, not what it is


def stop_token_ids(tokenizer) -> list[int]:
    """The template's end-of-turn token (when it is one token) and eos: where an answer ends."""
    end = tokenizer.encode(end_of_turn(tokenizer), add_special_tokens=False)
    ids = [end[0]] if len(end) == 1 else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def set_generation_defaults(model, tokenizer) -> None:
    """model.generation_config stops at the end of a turn and pads with the tokenizer's pad token."""
    config = model.generation_config
    config.eos_token_id = stop_token_ids(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.eos_token_id[-1]
    config.bos_token_id = tokenizer.bos_token_id
    config._from_model_config = False  # ours now, not derived from config.json (HF would rederive it)


def save_export(model, tokenizer, path: Path, state_dict: dict | None = None) -> None:
    """Write model and tokenizer to path as a complete Hugging Face directory (see the module doc)."""
    path = Path(path)
    if model.can_generate():  # a reward model (sequence classification) has no generation config
        set_generation_defaults(model, tokenizer)
    model.save_pretrained(path, state_dict=state_dict)
    tokenizer.model_max_length = model.config.max_position_embeddings  # not transformers' 1e30 "unknown"
    tokenizer.save_pretrained(path)
    _drop_load_time_keys(path / "tokenizer_config.json")
    for file in path.iterdir():
        if file.is_file():
            os.chmod(file, FILE_MODE)


def _drop_load_time_keys(config_file: Path) -> None:
    if not config_file.exists():
        return
    config = json.loads(config_file.read_text())
    if not any(key in config for key in LOAD_TIME_KEYS):
        return
    scratch = config_file.with_name(f".{config_file.name}.tmp")
    scratch.write_text(json.dumps({k: v for k, v in config.items() if k not in LOAD_TIME_KEYS}, indent=2,
                                  ensure_ascii=False) + "\n")
    os.replace(scratch, config_file)
