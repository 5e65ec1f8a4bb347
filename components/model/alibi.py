"""ALiBi (Press et al. 2022) on the LLaMA decoder: no rotary embedding; head h of n adds -m_h * (i - j)
to the causal attention score of query i on key j.

This file imports only torch and transformers: export copies it beside config.json (auto_map), so
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads an artifact without this
project; inside the project the classes are registered with the Auto classes (components.model).
Weights are named as LlamaForCausalLM's. Distances come from position_ids when there is no cache
(packed rows, shared prompts, padding), from cache slots when decoding: cached keys sit at slots
0..kv-1 and the queries at the last q of them (a static cache only adds a constant per query row,
which softmax ignores).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM,
                                                      LlamaForSequenceClassification, LlamaModel, LlamaPreTrainedModel,
                                                      LlamaRMSNorm, eager_attention_forward)


def alibi_slopes(n_heads: int, device=None) -> torch.Tensor:
    """m_h = 2^(-8h/n), h = 1..n, for a power of two n; otherwise the paper's interpolation (BLOOM's
    build_alibi_tensor): the slopes of the nearest lower power of two p, then every other slope of 2p."""
    p = 2 ** math.floor(math.log2(n_heads))
    slopes = [2 ** (-8 * h / p) for h in range(1, p + 1)]
    slopes += [2 ** (-8 * h / (2 * p)) for h in range(1, 2 * (n_heads - p), 2)]
    return torch.tensor(slopes, dtype=torch.float32, device=device)


class AlibiLlamaConfig(LlamaConfig):
    model_type = "alibi_llama"


class NoRotary(nn.Module):
    """Stands where LlamaModel computes cos/sin: ALiBi attention takes no position embedding."""

    def forward(self, hidden_states, position_ids=None):
        return None


def alibi_mask(slopes: torch.Tensor, query: torch.Tensor, key: torch.Tensor, attention_mask, position_ids) -> torch.Tensor:
    """The additive float mask [batch, heads, q, kv]: -m_h * (i - j) where attention is allowed, dtype min elsewhere."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if position_ids is not None and q_len == kv_len:
        q_pos = k_pos = position_ids.to(torch.float32)  # [batch, q]
    else:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=query.device, dtype=torch.float32)[None]
        k_pos = torch.arange(kv_len, device=query.device, dtype=torch.float32)[None]
    distance = q_pos[:, :, None] - k_pos[:, None, :]  # [batch, q, kv]
    bias = -slopes[None, :, None, None] * distance[:, None]
    if attention_mask is None:  # sdpa's causal skip (q == kv, or one query): causal, upper-left aligned
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)[None, None]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask[:, :, :, :kv_len]
    else:  # eager's additive mask: 0 allowed, dtype min blocked
        allowed = attention_mask[:, :, :, :kv_len] > torch.finfo(attention_mask.dtype).min / 2
    return torch.where(allowed, bias, torch.finfo(torch.float32).min).to(query.dtype)


class AlibiAttention(LlamaAttention):
    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        kwargs.pop("past_key_values", None)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        if self.config._attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"ALiBi needs sdpa or eager attention (an additive bias), not {self.config._attn_implementation}")
        # slopes made here, not a buffer: from_pretrained builds modules on the meta device and leaves buffers unset
        slopes = alibi_slopes(self.config.num_attention_heads, query.device)
        mask = alibi_mask(slopes, query, key, attention_mask, kwargs.get("position_ids"))
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(self, query, key, value, mask, dropout=0.0 if not self.training else self.attention_dropout,
                                    scaling=self.scaling, **kwargs)
        return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights


class AlibiDecoderLayer(LlamaDecoderLayer):
    def __init__(self, config, layer_idx: int):
        super().__init__(config, layer_idx)
        self.self_attn = AlibiAttention(config, layer_idx)


class AlibiLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = AlibiLlamaConfig
    config: AlibiLlamaConfig
    _no_split_modules = ["AlibiDecoderLayer"]
    _supports_flash_attn = False  # no additive bias there
    _supports_flex_attn = False
    _can_record_outputs = {"hidden_states": AlibiDecoderLayer, "attentions": AlibiAttention}


class AlibiLlamaModel(AlibiLlamaPreTrainedModel, LlamaModel):
    def __init__(self, config: AlibiLlamaConfig):
        AlibiLlamaPreTrainedModel.__init__(self, config)  # LlamaModel's body, with ALiBi layers and no rotary
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([AlibiDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = NoRotary()
        self.gradient_checkpointing = False
        self.post_init()


class AlibiLlamaForCausalLM(AlibiLlamaPreTrainedModel, LlamaForCausalLM):
    def __init__(self, config: AlibiLlamaConfig):
        AlibiLlamaPreTrainedModel.__init__(self, config)
        self.model = AlibiLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class AlibiLlamaForSequenceClassification(AlibiLlamaPreTrainedModel, LlamaForSequenceClassification):
    """The reward stage's model: the ALiBi decoder with a linear score head read at each row's last token
    (LlamaForSequenceClassification's forward; its __init__ would build the decoder through AutoModel)."""

    def __init__(self, config: AlibiLlamaConfig):
        AlibiLlamaPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = AlibiLlamaModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


# save_pretrained then copies this file and writes auto_map into config.json
AlibiLlamaConfig.register_for_auto_class()
AlibiLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
AlibiLlamaForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
