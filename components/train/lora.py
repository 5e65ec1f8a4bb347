"""LoRA adapters through peft, merged back into the base weights for export.

Only the adapters train. The exported model is a plain Hugging Face directory: the
adapters' product is added to the weights they adapt (merge_and_unload), so loading
it needs neither peft nor an adapter file.
"""
from __future__ import annotations

import sys

import torch


def add_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets: list[str],
             key: str = "lora_targets") -> torch.nn.Module:
    """The model wrapped by peft with LoRA on the named modules; the base weights frozen."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(targets) - names)
    if missing:  # peft would only say "not found"; name the key and what exists
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"config error: {key}={list(targets)!r}: {missing} are not modules of this model; "
                         f"its linear layers are {linear}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return get_peft_model(model, config)


def is_adapted(model: torch.nn.Module) -> bool:
    if "peft" not in sys.modules:  # nothing to check (and no peft import) in full fine-tuning
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def blank_like(model: torch.nn.Module) -> torch.nn.Module:
    """An untrained model of the same architecture (adapters too), to load a gathered state dict into."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    plain = model.get_base_model() if is_adapted(model) else model
    # a causal LM, or the reward stage's scalar-head model (sequence classification: it cannot generate)
    auto = AutoModelForCausalLM if plain.can_generate() else AutoModelForSequenceClassification
    if not is_adapted(model):
        return auto.from_config(model.config)
    from peft import get_peft_model

    base = auto.from_config(plain.config)
    return get_peft_model(base, model.peft_config["default"])


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model to export: adapters merged into their base weights (in place), or the model itself."""
    return model.merge_and_unload() if is_adapted(model) else model


def exportable(model: torch.nn.Module, state_dict: dict | None, sharded: bool) -> tuple[torch.nn.Module, dict | None]:
    """(model, state_dict) for save_pretrained to write a plain Hugging Face model.

    sharded (FSDP): state_dict is the gathered full one, loaded into an unsharded copy, since
    save_pretrained inspects the module's own (sharded) parameters, a collective the other ranks
    never join. A LoRA model is merged in place first. A None state_dict means the model's own, so
    tied weights are recognised as one.
    """
    if sharded:
        model = blank_like(model)
        model.load_state_dict(state_dict)
        state_dict = None
    if is_adapted(model):  # LoRA: adapters merged into the weights, a plain HF model
        return merged(model), None
    return model, state_dict
