"""The decoder's shape. Built as a Hugging Face LlamaForCausalLM, so artifacts are HF format."""
from __future__ import annotations

from dataclasses import dataclass

from components.config import check


@dataclass(kw_only=True)
class ModelConfig:
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int = 2  # < n_heads: grouped-query attention
    ffn_hidden: int = 704  # SwiGLU width (~8/3 d_model, a multiple of 64)
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    context_length: int = 256
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden", "context_length"):
            check(getattr(self, name) > 0, f"pretrain.model.{name}", getattr(self, name), "must be > 0")
        check(self.d_model % self.n_heads == 0, "pretrain.model.n_heads", self.n_heads, f"must divide pretrain.model.d_model={self.d_model}")
        check(self.n_heads % self.n_kv_heads == 0, "pretrain.model.n_kv_heads", self.n_kv_heads, f"must divide pretrain.model.n_heads={self.n_heads}")
        check((self.d_model // self.n_heads) % 2 == 0, "pretrain.model.n_heads", self.n_heads, "head dim must be even for RoPE")
