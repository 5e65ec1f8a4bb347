"""The PEFT methods of sft, align, reward and rl (adapter_config.py), through peft: building, stepping, loading.

lora, adalora and ia3 are merged into the base weights on export (lora.exportable): a plain
Hugging Face model. prefix, prompt, ptuning and qlora are not (virtual tokens have no weight to
merge into; merged into a 4-bit base, the adapters would be rounded away): the export is the base
model in model/ (for qlora its NF4 weights dequantized to fp32, as trained) and the adapter in
model/adapter/, which `load_model` (every later stage, eval, chat) puts back together as
transformers + peft do:

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(base, model_dir / "adapter")
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

import components.model.registry  # noqa: F401  registers the alibi_llama model type with the Auto classes
from components.config import check
from components.train import lora
from components.train.adapter_config import FEEDFORWARD, AdapterConfig

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # the non-merging methods' adapter, inside the exported model directory
ADALORA_PHASES = (0.1, 0.2)  # adalora: shares of the steps before pruning starts (tinit) and after it ends (tfinal)


def load_base(src: Path, cfg: AdapterConfig) -> torch.nn.Module:
    """The model to fine-tune: float32, or for qlora quantised to 4-bit NF4 (double quantisation, bf16 compute)
    on this process's GPU and prepared for k-bit training (norms in fp32, inputs requiring grads)."""
    from transformers import AutoModelForCausalLM

    if cfg.adapter != "qlora":
        return AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=quantization, dtype=torch.bfloat16,
                                                 device_map={"": torch.cuda.current_device()})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # the loop's knob decides


def load_trainable(src: Path, cfg: AdapterConfig, section: str) -> torch.nn.Module:
    """The exported model at src to fine-tune: its weights (4-bit for qlora) to take cfg.adapter, or, where the
    export is a method that does not merge (base + adapter), that adapter to train further, the base frozen."""
    if not (Path(src) / ADAPTER_DIR).is_dir():
        return load_base(src, cfg)
    model = load_model(src, trainable=True)
    check(cfg.adapter == "none", f"{section}.adapter", cfg.adapter,
          f"the model it starts from ({src}) is a {method_of(model)} adapter over its base, not merged: {section} "
          "trains that adapter further; set none")
    return model


def peft_config(model: torch.nn.Module, cfg: AdapterConfig, section: str, total_steps: int):
    """The peft config of cfg.adapter for this model (module names checked against it, naming the key)."""
    from peft import (AdaLoraConfig, IA3Config, LoraConfig, PrefixTuningConfig, PromptEncoderConfig,
                      PromptTuningConfig, TaskType)

    # a reward model (sequence classification): peft trains its new score head in full beside the adapter
    method, causal = cfg.adapter, TaskType.CAUSAL_LM if model.can_generate() else TaskType.SEQ_CLS
    if method in ("lora", "qlora", "adalora"):
        lora.check_targets(model, cfg.lora_targets, f"{section}.lora_targets")
    if method in ("lora", "qlora"):
        return LoraConfig(task_type=causal, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), bias="none")
    if method == "adalora":  # ranks start at lora_rank, pruned to adalora_target_rank on average
        tinit, tfinal = (max(1, int(share * total_steps)) for share in ADALORA_PHASES)
        if tinit + tfinal >= total_steps:  # AdaLoRA needs a pruning phase: name the key that gives it room
            raise ValueError(f"config error: {section}.max_steps={total_steps}: adalora needs more than {tinit + tfinal} "
                             f"steps (warm-up {tinit}, final {tfinal}) to prune ranks in between: raise it")
        return AdaLoraConfig(task_type=causal, init_r=cfg.lora_rank, target_r=cfg.adalora_target_rank,
                             lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_targets),
                             total_step=total_steps, tinit=tinit, tfinal=tfinal, deltaT=1)
    if method == "ia3":
        lora.check_targets(model, cfg.ia3_targets, f"{section}.ia3_targets")
        return IA3Config(task_type=causal, target_modules=list(cfg.ia3_targets),
                         feedforward_modules=[t for t in cfg.ia3_targets if t in FEEDFORWARD])
    prompt = {"prefix": PrefixTuningConfig, "prompt": PromptTuningConfig, "ptuning": PromptEncoderConfig}[method]
    return prompt(task_type=causal, num_virtual_tokens=cfg.num_virtual_tokens)


def add_adapter(model: torch.nn.Module, cfg: AdapterConfig, section: str, total_steps: int) -> torch.nn.Module:
    """The model wrapped by peft with cfg.adapter (only the adapter trains), or itself for adapter=none."""
    if cfg.adapter == "none":
        return model
    from peft import get_peft_model

    return get_peft_model(model, peft_config(model, cfg, section, total_steps))


def adapted_part(model: torch.nn.Module) -> torch.nn.Module | None:
    """The peft model the loop trains: the model itself, or its adapted child (ppo's ActorCritic: the actor); None."""
    if lora.is_adapted(model):
        return model
    return next((child for child in model.children() if lora.is_adapted(child)), None)


def after_update(model: torch.nn.Module, step: int) -> None:
    """What a method does after each optimizer update, the gradients still there: AdaLoRA scores its ranks'
    importance and prunes. (Its importance averages are not checkpointed: a resumed adalora run re-learns them.)"""
    model = adapted_part(model)
    if model is not None and hasattr(model.base_model, "update_and_allocate"):
        model.base_model.update_and_allocate(step)


def orthogonal_penalty(model: torch.nn.Module):
    """AdaLoRA's orthogonality regulariser as peft adds it to a loss it computes itself (AdaLoraModel.forward):
    orth_reg_weight x the mean over the adapter's P (lora_A) and Q (lora_B) of ||P P^T - I||_F (||Q^T Q - I||_F).
    Our loss functions read logits, so peft never adds it: the loop does, through this function of no
    arguments (None for every other model)."""
    model = adapted_part(model)
    if model is None or not hasattr(model.base_model, "update_and_allocate"):
        return None
    name = model.base_model.trainable_adapter_name
    weight = model.peft_config[name].orth_reg_weight
    factors = [(n, p) for n, p in model.named_parameters() if ("lora_A" in n or "lora_B" in n) and name in n]

    def penalty() -> torch.Tensor:
        total = 0.0
        for n, p in factors:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            total = total + torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device))
        return weight * total / max(1, len(factors))

    return penalty if weight else None


def load_model(model_dir: Path, trainable: bool = False, config=None) -> torch.nn.Module:
    """An exported model in float32: the plain Hugging Face model, or base + adapter where the method does
    not merge (trainable: the adapter trains further, the base stays frozen). config: a model config to load
    the weights under instead of the saved one (eval's passkey conditions set its RoPE)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **({"config": config} if config else {}))
    adapter = Path(model_dir) / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        return model
    from peft import PeftConfig, PeftModel

    virtual = PeftConfig.from_pretrained(adapter).is_prompt_learning
    model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable and not virtual)
    if trainable and virtual:  # peft refuses is_trainable for these; their only weights are the prompt encoder's
        model.active_peft_config.inference_mode = False
        for param in model.prompt_encoder.parameters():
            param.requires_grad_(True)
    return model


def generate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
    """model.generate(input_ids=..., attention_mask=..., **kwargs): the prompt ids and the new tokens, for a plain
    model and for peft's virtual-token methods alike. Through peft's own generate those are wrong with
    transformers 5 (peft 0.21.2 puts its prefix in `past_key_values`, which generate's `cache` overrides, so a
    prefix model answers as its base; prompt and p-tuning insert their virtual tokens again at every cached
    step). Here the base model generates from the virtual tokens itself: the prefix as a pre-filled cache (one
    dummy id per virtual position, which generate skips), prompt embeddings ahead of the prompt's, the mask
    covering them; left padding stays between them and the prompt, so every real token sits where training put
    it (tests/test_peft.py checks greedy answers against full forward passes, one unpadded row at a time)."""
    if not (lora.is_adapted(model) and model.active_peft_config.is_prompt_learning):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    import copy

    config = copy.deepcopy(kwargs.pop("generation_config", None) or model.generation_config)
    config.update(**{k: kwargs.pop(k) for k in list(kwargs) if hasattr(config, k)})  # streamer etc. stay kwargs
    beams, repeat = config.num_beams or 1, config.num_return_sequences or 1
    if repeat > 1 and beams == 1:  # samples expanded here: generate would not expand a cache handed to it
        input_ids, attention_mask = input_ids.repeat_interleave(repeat, 0), attention_mask.repeat_interleave(repeat, 0)
        config.num_return_sequences = 1
    peft_config, base = model.active_peft_config, model.get_base_model()
    n, virtual = input_ids.shape[0], peft_config.num_virtual_tokens
    mask = torch.cat([attention_mask.new_ones(n, virtual), attention_mask], 1)
    if peft_config.peft_type.value == "PREFIX_TUNING":  # beam search expands the ids by num_beams, not the cache
        dummy = input_ids.new_full((n, virtual), config.pad_token_id or 0)
        out = base.generate(input_ids=torch.cat([dummy, input_ids], 1), attention_mask=mask,
                            past_key_values=model.get_prompt(batch_size=n * beams), generation_config=config, **kwargs)
        return out[:, virtual:]
    embeds = model.word_embeddings(input_ids)
    embeds = torch.cat([model.get_prompt(batch_size=n).to(embeds.dtype), embeds], 1)
    new = base.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config, **kwargs)
    return torch.cat([input_ids, new], 1)  # from embeddings alone, generate returns the new tokens only


def harness_adapter(model_dir: Path) -> str | None:
    """The adapter directory for lm-evaluation-harness (HFLM(peft=...)), None for a plain model. A prompt or
    p-tuning adapter is refused: its model returns logits for the virtual tokens too, which the harness would
    read as the prompt's (scores silently shifted)."""
    method = unmerged_method(model_dir)
    if method is None:
        return None
    if method in ("PROMPT_TUNING", "P_TUNING"):
        raise ValueError(f"eval.benchmarks: {model_dir} is a {method} adapter (sft/align.adapter=prompt "
                         "or ptuning), whose extra logits lm-evaluation-harness cannot align: use another adapter "
                         "or set eval.benchmarks=[]")
    return str(Path(model_dir) / ADAPTER_DIR)


def unmerged_method(model_dir: Path) -> str | None:
    """The peft method of an export that is base + adapter (PREFIX_TUNING, ...), None for a plain model."""
    adapter = Path(model_dir) / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        return None
    from peft import PeftConfig

    return PeftConfig.from_pretrained(adapter).peft_type.value


def method_of(model: torch.nn.Module) -> str:
    """The peft method a model carries ("none" for a plain model), by peft's name (LORA, PREFIX_TUNING, ...)."""
    return str(model.peft_config["default"].peft_type.value) if lora.is_adapted(model) else "none"
