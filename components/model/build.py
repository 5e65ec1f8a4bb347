"""Build a LLaMA-style decoder (RMSNorm pre-norm, SwiGLU, RoPE, GQA) from ModelConfig, or load one.

Dense: transformers' LlamaForCausalLM. MoE: MixtralForCausalLM, the same decoder with each
SwiGLU replaced by top-k routed SwiGLU experts. Either way the artifact is a plain HF
directory that AutoModelForCausalLM loads.
"""
from __future__ import annotations

import logging

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

import components.model.registry  # noqa: F401  registers alibi_llama (init_from of an alibi checkpoint)
from components.model.alibi import AlibiLlamaConfig, AlibiLlamaForCausalLM
from components.model.config import SHAPE_KEYS, ModelConfig

log = logging.getLogger(__name__)


def rope_parameters(cfg: ModelConfig, theta: float, original: int) -> dict:
    """transformers 5's `rope_parameters` for the configured scaling (modeling_rope_utils)."""
    params: dict = {"rope_type": "default" if cfg.rope_scaling == "none" else cfg.rope_scaling, "rope_theta": theta}
    if cfg.rope_scaling != "none":
        params["factor"] = float(cfg.rope_factor)
    if cfg.rope_scaling == "yarn":
        params["original_max_position_embeddings"] = original
    return params


def max_positions(cfg: ModelConfig, original: int) -> int:
    """HF's max_position_embeddings: the context the model is meant for. Linear and YaRN: the
    extended one (YaRN checks factor = it / original); dynamic NTK scales past it, so the original."""
    if cfg.rope_scaling in ("linear", "yarn"):
        return int(original * cfg.rope_factor)
    return original if cfg.rope_scaling == "dynamic" else cfg.context_length


def hf_config(cfg: ModelConfig, tokenizer) -> LlamaConfig | MixtralConfig:  # AlibiLlamaConfig is a LlamaConfig
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=max_positions(cfg, cfg.original_context),
        rope_parameters=rope_parameters(cfg, cfg.rope_theta, cfg.original_context),
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
    )
    if cfg.position == "alibi":
        return AlibiLlamaConfig(**common)
    if not cfg.moe_experts:
        return LlamaConfig(**common)
    return MixtralConfig(**common, num_local_experts=cfg.moe_experts, num_experts_per_tok=cfg.moe_top_k,
                         router_aux_loss_coef=cfg.router_aux_loss_coef, sliding_window=None)


def build_model(cfg: ModelConfig, tokenizer, seed: int) -> LlamaForCausalLM | MixtralForCausalLM:
    config = hf_config(cfg, tokenizer)
    torch.manual_seed(seed)
    if cfg.position == "alibi":
        return AlibiLlamaForCausalLM(config)
    return MixtralForCausalLM(config) if cfg.moe_experts else LlamaForCausalLM(config)


def load_checkpoint(cfg: ModelConfig, tokenizer) -> torch.nn.Module:
    """The init_from checkpoint's weights as they are (fp32 for training); RoPE scaling applied if configured."""
    config = AutoConfig.from_pretrained(cfg.init_from)
    log.info("NOTE: pretrain.model.init_from=%s: %s weights loaded; the shape keys (%s) are ignored",
             cfg.init_from, type(config).__name__, ", ".join(f"pretrain.model.{k}" for k in SHAPE_KEYS))
    if cfg.rope_scaling != "none":  # context extension of an existing model, from the context it was trained at
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", cfg.rope_theta)
        original = cfg.rope_original_context or config.max_position_embeddings
        config.rope_parameters = rope_parameters(cfg, theta, original)
        config.max_position_embeddings = max_positions(cfg, original)
        log.info("NOTE: RoPE of %s replaced by %s", cfg.init_from, config.rope_parameters)
    if cfg.rope_scaling == "none" and cfg.context_length > config.max_position_embeddings:  # trained longer, no interpolation
        log.warning("NOTE: context_length=%d is longer than %s's %d positions and rope_scaling=none: positions "
                    "past them are extrapolated, then trained", cfg.context_length, cfg.init_from, config.max_position_embeddings)
        config.max_position_embeddings = cfg.context_length
    model = AutoModelForCausalLM.from_pretrained(cfg.init_from, config=config, dtype=torch.float32)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(f"pretrain.model.init_from={cfg.init_from}: the tokenizer has {len(tokenizer)} tokens but the "
                         f"model only {model.get_input_embeddings().num_embeddings} embeddings")
    return model
