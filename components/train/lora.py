"""LoRA adapters through peft, and the export of any peft model (adapters.py builds the others).

Only the adapters train. Where the method merges (lora, adalora, ia3 over a full-precision base),
the exported model is a plain Hugging Face directory: the adapters are folded into the weights
they adapt (merge_and_unload), so loading it needs neither peft nor an adapter file. Otherwise
the base model is exported with the adapter beside it, in model/adapter (adapters.load_model).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def add_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets: list[str],
             key: str = "lora_targets") -> torch.nn.Module:
    """The model wrapped by peft with LoRA on the named modules; the base weights frozen."""
    from peft import LoraConfig, get_peft_model

    check_targets(model, targets, key)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return get_peft_model(model, config)


def check_targets(model: torch.nn.Module, targets: list[str], key: str) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(targets) - names)
    if missing:  # peft would only say "not found"; name the key and what exists
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"config error: {key}={list(targets)!r}: {missing} are not modules of this model; "
                         f"its linear layers are {linear}")


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


def merges(model: torch.nn.Module) -> bool:
    """Whether the adapter folds into the base weights: LoRA, AdaLoRA and IA3 over a full-precision base
    (virtual tokens have no weight to fold into; a 4-bit base, qlora, would be rounded again)."""
    from peft import PeftType

    quantized = getattr(model.get_base_model().config, "quantization_config", None) is not None
    return model.peft_config["default"].peft_type in (PeftType.LORA, PeftType.ADALORA, PeftType.IA3) and not quantized


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model to export: adapters merged into their base weights (in place), or the model itself."""
    return model.merge_and_unload() if is_adapted(model) else model


def save_adapter(model: torch.nn.Module, path: Path) -> None:
    """The adapter alone (peft's files) in path/adapter, beside the base model exported in path."""
    adapter = Path(path) / "adapter"
    model.save_pretrained(adapter)
    for file in adapter.iterdir():
        os.chmod(file, 0o644)  # readable by a serving user, as the export's other files


def exportable(model: torch.nn.Module, state_dict: dict | None, sharded: bool,
               path: Path) -> tuple[torch.nn.Module, dict | None]:
    """(model, state_dict) for save_pretrained to write a plain Hugging Face model to path; a method that
    does not merge has its adapter written to path/adapter first (save_adapter) and the base returned.

    sharded (FSDP): state_dict is the gathered full one, loaded into an unsharded copy, since
    save_pretrained inspects the module's own (sharded) parameters, a collective the other ranks
    never join. A LoRA model is merged in place first. A None state_dict means the model's own, so
    tied weights are recognised as one.
    """
    if sharded:
        model = blank_like(model)
        model.load_state_dict(state_dict)
        state_dict = None
    if not is_adapted(model):
        return model, state_dict
    if merges(model):  # adapters merged into the weights, a plain HF model
        return merged(model), None
    save_adapter(model, path)
    if model.active_peft_config.is_prompt_learning:  # the base was never touched
        return model.get_base_model(), None
    base = model.unload()  # qlora: the adapters taken out of the (4-bit) base, unmerged
    return base.dequantize(dtype=torch.float32), None  # its NF4 weights as trained, in fp32: no bitsandbytes to load
