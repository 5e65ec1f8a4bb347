"""The decoder's shape. Built as a Hugging Face LlamaForCausalLM (MixtralForCausalLM when it has
experts), so artifacts are HF format; or imported from an existing HF checkpoint (init_from)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from components.config import check, check_choice, input_path

ROPE_SCALINGS = ("none", "linear", "dynamic", "yarn")
POSITIONS = ("rope", "alibi")  # rotary embedding, or ALiBi attention biases (components/model/alibi.py)
# ignored when the weights come from init_from (the checkpoint's own config.json decides them)
SHAPE_KEYS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden", "rope_theta", "tie_embeddings",
              "init_std", "moe_experts", "moe_top_k", "router_aux_loss_coef")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def missing_checkpoint_files(path: str, weights: bool) -> str:
    """What keeps `path` from being an HF checkpoint (weights=False: only a tokenizer); "" if nothing."""
    root = Path(path)
    if not root.is_dir():
        return "no such directory"
    if weights and not (root / "config.json").is_file():
        return "no config.json"
    if weights and not any(root.glob("*.safetensors")) and not any(root.glob("*.bin")):
        return "no weights (*.safetensors or *.bin)"
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        return f"no tokenizer (none of {', '.join(TOKENIZER_FILES)})"
    if not has_chat_template(root):
        return "its tokenizer has no chat template (sft and align need one: add chat_template.jinja)"
    return ""


def has_chat_template(root: Path) -> bool:
    """Where transformers keeps it: chat_template.jinja (v5), chat_template.json, or tokenizer_config.json."""
    if (root / "chat_template.jinja").is_file() or (root / "chat_template.json").is_file():
        return True
    config = root / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int = 2  # < n_heads: grouped-query attention
    ffn_hidden: int = 704  # SwiGLU width (~8/3 d_model, a multiple of 64); per expert with MoE
    position: str = "rope"  # rope | alibi (no position embedding; per-head linear attention biases)
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    context_length: int = 256
    init_std: float = 0.02
    moe_experts: int = 0  # 0: dense SwiGLU; > 1: that many SwiGLU experts per layer (Mixtral-style MoE)
    moe_top_k: int = 2  # experts each token is routed to
    router_aux_loss_coef: float = 0.01  # weight of the load-balancing loss added to the training loss
    rope_scaling: str = "none"  # none | linear (position interpolation) | dynamic (NTK) | yarn
    rope_factor: float = 1.0  # context extension factor of the scaling
    rope_original_context: int = 0  # context the positions were trained at (0: context_length, or init_from's); dynamic/yarn scale past it
    # an HF checkpoint dir to start from (its weights, tokenizer, chat template); made absolute by the
    # flow (components.config.resolve_paths): the launcher's workers run elsewhere
    init_from: str | None = input_path(None, absolute=True)

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden", "context_length"):
            check(getattr(self, name) > 0, f"pretrain.model.{name}", getattr(self, name), "must be > 0")
        check(self.d_model % self.n_heads == 0, "pretrain.model.n_heads", self.n_heads, f"must divide pretrain.model.d_model={self.d_model}")
        check(self.n_heads % self.n_kv_heads == 0, "pretrain.model.n_kv_heads", self.n_kv_heads, f"must divide pretrain.model.n_heads={self.n_heads}")
        self._check_position()
        check(self.position == "alibi" or (self.d_model // self.n_heads) % 2 == 0, "pretrain.model.n_heads", self.n_heads, "head dim must be even for RoPE")
        check(self.moe_experts == 0 or self.moe_experts > 1, "pretrain.model.moe_experts", self.moe_experts,
              "must be 0 (dense) or > 1")
        if self.moe_experts:
            check(0 < self.moe_top_k <= self.moe_experts, "pretrain.model.moe_top_k", self.moe_top_k,
                  f"must be in [1, pretrain.model.moe_experts={self.moe_experts}]")
        check(self.router_aux_loss_coef >= 0, "pretrain.model.router_aux_loss_coef", self.router_aux_loss_coef, "must be >= 0")
        check_choice("pretrain.model.rope_scaling", self.rope_scaling, ROPE_SCALINGS)
        check(self.rope_factor >= 1, "pretrain.model.rope_factor", self.rope_factor, "must be >= 1")
        check(0 <= self.rope_original_context <= (1 << 30 if self.init_from else self.context_length),
              "pretrain.model.rope_original_context", self.rope_original_context,
              f"must be in [0, pretrain.model.context_length={self.context_length}] (any >= 0 with init_from)")
        if self.init_from is not None:
            missing = missing_checkpoint_files(str(Path(self.init_from).expanduser()), weights=True)
            check(not missing, "pretrain.model.init_from", self.init_from, f"not a Hugging Face checkpoint: {missing}")

    def _check_position(self) -> None:
        check_choice("pretrain.model.position", self.position, POSITIONS)
        if self.position == "alibi":
            check(self.rope_scaling == "none", "pretrain.model.rope_scaling", self.rope_scaling,
                  "must be none with pretrain.model.position=alibi (no rotary embedding to scale)")
            check(self.moe_experts == 0, "pretrain.model.moe_experts", self.moe_experts,
                  "must be 0 with pretrain.model.position=alibi (ALiBi is built on the dense decoder only)")
        if self.init_from is not None and (Path(self.init_from).expanduser() / "config.json").is_file():
            model_type = json.loads((Path(self.init_from).expanduser() / "config.json").read_text()).get("model_type")
            own = "alibi" if model_type == "alibi_llama" else "rope"
            check(own == self.position, "pretrain.model.position", self.position,
                  f"pretrain.model.init_from={self.init_from} is a {model_type} checkpoint ({own} positions): "
                  f"set pretrain.model.position={own}")

    @property
    def original_context(self) -> int:
        return self.rope_original_context or self.context_length
