"""Hydra overrides -> a validated PipelineConfig, with Hydra's compose API.

The one way a run gets its config, wherever it starts: the Prefect flow composes from
its `overrides` parameter (a UI run, `prefect deployment run -p overrides=[...]`, a
schedule) and `make pipeline` hands the flow its command line's overrides, so every
path computes the same config and so the same cache keys.
"""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from flows.config import PipelineConfig, register, to_pipeline_config

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_pipeline_config(overrides: list[str]) -> PipelineConfig:
    """Compose conf/config.yaml with `overrides` and validate it; a bad override raises ValueError
    (or an OmegaConf error) naming the key. Inside a @hydra.main or multirun job Hydra is already
    initialized (with this conf dir): compose there; elsewhere initialize it for this call only."""
    from flows.pipeline import check_top_level_overrides  # the CLI's own check: one message for a top-level typo

    overrides = list(overrides)
    check_top_level_overrides(overrides)
    register()
    if GlobalHydra.instance().is_initialized():
        return to_pipeline_config(compose("config", overrides=overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_pipeline_config(compose("config", overrides=overrides))
