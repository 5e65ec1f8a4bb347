"""The whole pipeline's config schema: one section per stage plus run-level settings.

Registered with Hydra's ConfigStore as the schema of conf/config.yaml. `to_pipeline_config`
is the one place a composed config is validated, before any work: an unknown key in any
form (`key=`, `+key=`, `++key=`, a yaml typo, a nested section) fails naming the dotted key
and the nearest valid ones, a bad value fails in the stage dataclass's __post_init__.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, make_dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from components.config import check, check_config_keys, resolve_paths, writable_schema
from components.stages import STAGES
from components.train.config import LauncherConfig


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How the pipeline runs. Nothing here is part of any cache key."""

    artifacts_dir: str | None = None  # null: <repo>/artifacts
    until: str = "eval"  # last stage to run (its dependencies run too)
    dry_run: bool = False  # print the plan (keys; cached or to build) and stop

    def __post_init__(self) -> None:
        check(self.until in STAGES, "run.until", self.until, f"choose one of {list(STAGES)}")


@dataclass(frozen=True, kw_only=True)
class CrossStageChecks:
    """The checks that read more than one stage's section (the base of PipelineConfig)."""

    def __post_init__(self) -> None:
        init = self.pretrain.model.init_from  # its weights need its own tokenizer (the yaml links the two)
        check(init is None or self.tokenizer.init_from == init, "tokenizer.init_from", self.tokenizer.init_from,
              f"must be the checkpoint's own tokenizer: leave it to follow pretrain.model.init_from={init!r}")
        check(self.extend.enabled or self.run.until != "extend", "run.until", self.run.until,
              "the extend stage is off: set extend.enabled=true, or stop at another stage")
        check_adapters(self)
        check(not (self.rl.enabled and self.rl.reward_source == "model") or self.reward.enabled, "reward.enabled",
              self.reward.enabled, f"rl.reward={self.rl.reward} (with rl.algorithm={self.rl.algorithm}) scores answers with "
              "the reward stage's model: set reward.enabled=true, or rl.reward=checker")
        if self.extend.enabled and init is None:  # an imported model's context is known only from its files, at run time
            short = self.pretrain.model.context_length
            check(self.extend.context_length > short, "extend.context_length", self.extend.context_length,
                  f"must be longer than pretrain.model.context_length={short}")


def check_adapters(cfg) -> None:
    """sft's adapter as align, reward, rl and eval will meet it, and rl's as eval will (components/train/adapter_config.py)."""
    from components.train.adapter_config import MERGING, VIRTUAL_TOKENS

    sft = cfg.sft.adapter
    check(sft in ("none", *MERGING) or cfg.align.adapter == "none", "align.adapter", cfg.align.adapter,
          f"sft.adapter={sft} is exported unmerged (base + adapter): align trains that adapter further; set none")
    check(sft not in VIRTUAL_TOKENS or not cfg.align.prefix_sharing, "align.prefix_sharing", True,
          f"sft.adapter={sft} puts learned tokens before each row, which prefix-shared pairs would share: set false")
    if sft not in ("none", *MERGING):
        check(not cfg.reward.enabled, "reward.enabled", cfg.reward.enabled,
              f"sft.adapter={sft} is exported unmerged (base + adapter), and the reward model starts from the sft "
              "model's weights: set sft.adapter to none, lora, adalora or ia3, or reward.enabled=false")
        check(not cfg.rl.enabled or cfg.rl.adapter == "none", "rl.adapter", cfg.rl.adapter,
              f"sft.adapter={sft} is exported unmerged (base + adapter): rl trains that adapter further; set none")
        check(not (cfg.rl.enabled and cfg.rl.algorithm == "ppo"), "rl.algorithm", cfg.rl.algorithm,
              f"sft.adapter={sft} is exported unmerged (base + adapter), and ppo's critic starts from the sft model's "
              "weights: use grpo, or a merging sft.adapter")
    scored = ["sft", "align"] + (["rl"] if cfg.rl.enabled else [])
    for stage in scored:  # lm-evaluation-harness would read their virtual tokens' logits as the prompt's
        method = getattr(cfg, stage).adapter
        check(not (cfg.eval.benchmarks and method in ("prompt", "ptuning")), "eval.benchmarks", "[...]",
              f"{stage}.adapter={method}: lm-evaluation-harness cannot score a model with learned input tokens; "
              "set eval.benchmarks=[] or another adapter")


def pipeline_config_class() -> type:
    """PipelineConfig from the stage table: one section per stage (its config class), then
    launcher and run; a stage added to STAGES (`register_stage`) gets its section here."""
    sections = [(name, stage.config_type(), field(default_factory=stage.config_type())) for name, stage in STAGES.items()]
    sections += [("launcher", LauncherConfig, field(default_factory=LauncherConfig)),
                 ("run", RunConfig, field(default_factory=RunConfig))]
    schema = make_dataclass("PipelineConfig", sections, bases=(CrossStageChecks,), frozen=True, kw_only=True)
    schema.__module__ = __name__  # python 3.11's make_dataclass has no `module=`
    return schema


PipelineConfig = pipeline_config_class()


def register() -> None:
    """The schema of conf/config.yaml, from the stage table as it is now."""
    ConfigStore.instance().store(name="pipeline_schema", node=writable_schema(pipeline_config_class()))


def to_pipeline_config(cfg: DictConfig) -> PipelineConfig:
    """DictConfig -> frozen dataclasses: unknown keys rejected, input paths made absolute, then
    every __post_init__ check. The caller's DictConfig is left as it was."""
    schema = pipeline_config_class()  # the stage table as it is now (a stage may have been registered)
    check_config_keys(cfg, schema)
    cfg = copy.deepcopy(cfg)
    resolve_paths(cfg, schema)
    return OmegaConf.to_object(cfg)
