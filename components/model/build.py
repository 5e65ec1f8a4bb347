"""Build a LLaMA-style decoder (RMSNorm pre-norm, SwiGLU, RoPE, GQA) from ModelConfig."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from components.model.config import ModelConfig


def build_model(cfg: ModelConfig, tokenizer, seed: int) -> LlamaForCausalLM:
    hf_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.context_length,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
