"""The PEFT method a fine-tuning stage (sft, align) trains through, and its settings.

A mixin of the stage's config: its fields sit in conf/<stage>/default.yaml like the stage's own.
No torch import here: configs are built (and checked) before any model exists.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

from components.config import check, check_choice

ADAPTERS = ("none", "lora", "adalora", "ia3", "prefix", "prompt", "ptuning", "qlora")
MERGING = ("lora", "adalora", "ia3")  # merged into the base weights on export: a plain model
VIRTUAL_TOKENS = ("prefix", "prompt", "ptuning")  # learned tokens before every sequence: one causal mask per row
LORA_FAMILY = ("lora", "adalora", "qlora")  # the ones lora_targets, lora_alpha and lora_dropout apply to
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FEEDFORWARD = ("gate_proj", "up_proj", "down_proj")  # IA3 scales these modules' inputs, the others' outputs


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    # none (full fine-tuning) | lora | adalora (LoRA whose ranks are pruned by importance during training) |
    # ia3 (learned scales of keys, values and the MLP input) | prefix (learned keys and values before every
    # sequence, every layer) | prompt (learned input embeddings before every sequence) | ptuning (the same, made by
    # a small MLP) | qlora (LoRA over a 4-bit NF4 base, paged AdamW; CUDA + bitsandbytes). lora, adalora and ia3
    # are merged into the weights on export; the others export the base model and the adapter (model/adapter)
    adapter: str = "none"
    lora_rank: int = 8  # lora, qlora: the adapters' rank; adalora: each module's starting rank
    lora_alpha: float = 16.0  # adapter scale = lora_alpha / lora_rank
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))  # module names given adapters
    # adalora: the mean rank left once pruning ends (pruning runs from 10% to 80% of the steps, then the ranks stay)
    adalora_target_rank: int = 4
    ia3_targets: list[str] = field(default_factory=lambda: ["k_proj", "v_proj", "down_proj"])  # ia3: modules scaled
    num_virtual_tokens: int = 16  # prefix, prompt, ptuning: learned tokens before every sequence

    def check_adapter(self, section: str, packed_key: str | None = None) -> None:
        """Check the adapter settings, keys named under `section`. packed_key: the stage's setting (true)
        that puts several examples in one row, which virtual tokens cannot share (one causal mask per row)."""
        check_choice(f"{section}.adapter", self.adapter, ADAPTERS)
        check(self.lora_rank > 0, f"{section}.lora_rank", self.lora_rank, "must be > 0")
        check(self.lora_alpha > 0, f"{section}.lora_alpha", self.lora_alpha, "must be > 0")
        check(0 <= self.lora_dropout < 1, f"{section}.lora_dropout", self.lora_dropout, "must be in [0, 1)")
        check(self.adapter not in LORA_FAMILY or len(self.lora_targets) > 0, f"{section}.lora_targets",
              self.lora_targets, f"name at least one module (e.g. q_proj, v_proj) for {section}.adapter={self.adapter}")
        check(0 < self.adalora_target_rank <= (self.lora_rank if self.adapter == "adalora" else math.inf), f"{section}.adalora_target_rank",
              self.adalora_target_rank, f"must be in [1, {section}.lora_rank={self.lora_rank}]: pruning only lowers ranks")
        check(self.adapter != "ia3" or len(self.ia3_targets) > 0, f"{section}.ia3_targets", self.ia3_targets,
              f"name at least one module (e.g. k_proj, v_proj, down_proj) for {section}.adapter=ia3")
        check(self.num_virtual_tokens > 0, f"{section}.num_virtual_tokens", self.num_virtual_tokens, "must be > 0")
        check(self.adapter not in VIRTUAL_TOKENS or packed_key is None, packed_key or f"{section}.adapter", True,
              f"{section}.adapter={self.adapter} puts learned tokens before each row, which packed examples would "
              f"share (one causal mask per row, no 4D masks through peft): set {packed_key}=false")
        if self.adapter == "qlora":  # before any work: the 4-bit kernels exist only on CUDA
            check(cuda_available(), f"{section}.adapter", self.adapter,
                  "needs a CUDA GPU (bitsandbytes' 4-bit NF4 kernels and paged AdamW); this machine has none: "
                  "use lora (the same adapters over the full-precision base)")
            check(importlib.util.find_spec("bitsandbytes") is not None, f"{section}.adapter", self.adapter,
                  "needs bitsandbytes: pip install bitsandbytes")


def cuda_available() -> bool:
    import torch  # here, not at import: a config module stays light

    return torch.cuda.is_available()
