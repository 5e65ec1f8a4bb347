"""End to end on the smoke experiment: the real Prefect engine, every stage real.

The cache contract, proved from a user's side: a rerun builds nothing and Prefect
says Cached; changing sft.lr rebuilds sft, align and eval only; a logging-only
change rebuilds nothing; a deleted artifact is rebuilt alone; a stage that raises
leaves nothing a later run would trust.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from components.eval.html import inline_images
from flows.config import register, to_pipeline_config
from flows.pipeline import run_pipeline
from flows.plan import make_plan

REPO = Path(__file__).resolve().parents[1]
STAGES = ["data", "tokenizer", "pretrain", "sft", "align", "eval"]
pytestmark = pytest.mark.slow


def config(root: Path, *overrides: str):
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", f"run.artifacts_dir={root}", *overrides])
    return to_pipeline_config(cfg)


def run(root: Path, *overrides: str) -> list[dict]:
    """Through the flow `llm-pipeline`, which composes these overrides inside the run (as a UI run does)."""
    all_overrides = ["experiment=smoke", f"run.artifacts_dir={root}", *overrides]
    return run_pipeline(config(root, *overrides), overrides=all_overrides)


def statuses(rows: list[dict]) -> dict[str, str]:
    return {r["stage"]: r["status"] for r in rows}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    rows = run(root)
    assert statuses(rows) == {s: "built" for s in STAGES}
    return root


def test_first_run_writes_every_artifact_with_its_manifest(root):
    for stage in STAGES:
        (path,) = [p for p in (root / stage).iterdir() if not p.name.startswith(".")]
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["key"] == path.name
    (eval_dir,) = [p for p in (root / "eval").iterdir() if not p.name.startswith(".")]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["unigram_ppl"] > 1
    for model in ("base", "sft", "aligned"):
        assert metrics[model]["val_ppl"] > 1
    for model in ("sft", "aligned"):
        assert 0.0 <= metrics[model]["task_accuracy"] <= 1.0
        assert 0.0 <= metrics[model]["preference_accuracy"] <= 1.0
    assert (eval_dir / "report.md").read_text().strip()


def test_second_run_is_cached_in_prefect(root):
    assert statuses(run(root)) == {s: "cached" for s in STAGES}


def test_the_run_attaches_its_summary_and_eval_report_as_artifacts(root):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    rows = run(root)
    with get_client(sync_client=True) as client:
        (latest,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)  # the run just above
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[latest.id])))}
    assert all(f"| {s} | cached |" in artifacts["pipeline-summary"].data for s in STAGES)
    report = Path(rows[-1]["path"]) / "report.md"
    assert artifacts["eval-report"].data == inline_images(report.read_text(), report.parent)
    assert "](loss_curves.png)" not in artifacts["eval-report"].data  # the UI shows the images, not alt text
    assert "](data:image/png;base64," in artifacts["eval-report"].data


def test_changing_sft_lr_rebuilds_sft_align_eval_only(root):
    rows = run(root, "sft.lr=0.0007")
    assert statuses(rows) == {
        "data": "cached", "tokenizer": "cached", "pretrain": "cached",
        "sft": "built", "align": "built", "eval": "built",
    }


def test_logging_only_settings_rebuild_nothing(root):
    rows = run(root, "pretrain.log_every=3", "sft.log_every=2", "data.workers=1")
    assert statuses(rows) == {s: "cached" for s in STAGES}


def test_stages_of_different_precision_run_in_one_process(root, monkeypatch):
    """fp32 sft between bf16 stages, all in this process (launcher=single). The CPU is made to look
    bf16-capable, so the bf16 path runs on any host (emulated, slowly, where it is not native)."""
    from components.train import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    rows = run(root, "sft.mixed_precision=no", "align.beta=0.2")
    assert {s: st for s, st in statuses(rows).items() if st == "built"} == {"sft": "built", "align": "built",
                                                                             "eval": "built"}
    paths = {r["stage"]: Path(r["path"]) for r in rows}
    ran = {s: json.loads((paths[s] / "manifest.json").read_text())["metrics"]["precision"] for s in ("sft", "align")}
    assert ran == {"sft": "no", "align": "bf16"}


def test_deleted_artifact_is_rebuilt_and_nothing_else(root):
    plan_rows = run(root)
    pretrain = Path(next(r["path"] for r in plan_rows if r["stage"] == "pretrain"))
    shutil.rmtree(pretrain)
    rows = run(root)
    assert statuses(rows) == {s: ("built" if s == "pretrain" else "cached") for s in STAGES}
    assert (pretrain / "manifest.json").is_file()


def test_stage_that_raises_midway_leaves_no_trusted_directory(root, monkeypatch):
    import components.align.run as align_run

    def crash(cfg, inputs, ctx):
        out_dir = ctx.out_dir
        (out_dir / "model").mkdir()
        (out_dir / "model" / "half.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed midway")

    monkeypatch.setattr(align_run, "run", crash)
    with pytest.raises(RuntimeError, match="killed midway"):
        run(root, "align.beta=0.33")
    leftovers = [p for p in (root / "align").iterdir() if not p.name.startswith(".")]  # hidden: lock, kept partial
    assert all((p / "manifest.json").is_file() for p in leftovers)  # only complete artifacts remain
    monkeypatch.undo()
    assert statuses(run_pipeline(config(root, "align.beta=0.33")))["align"] == "built"  # the in-process plan flow


def test_extend_stands_in_for_pretrain_when_enabled(root):
    rows = run(root, "extend.enabled=true")
    assert statuses(rows) == {"data": "cached", "tokenizer": "cached", "pretrain": "cached", "extend": "built",
                              "sft": "built", "align": "built", "eval": "built"}
    paths = {r["stage"]: Path(r["path"]) for r in rows}
    extend = json.loads((paths["extend"] / "manifest.json").read_text())
    assert extend["inputs"]["pretrain"]["key"] == paths["pretrain"].name
    assert extend["metrics"]["context_after"] == 2 * extend["metrics"]["context_before"]
    sft = json.loads((paths["sft"] / "manifest.json").read_text())
    assert sft["inputs"]["pretrain"]["key"] == paths["extend"].name  # sft trained the extended model
    model_config = json.loads((paths["sft"] / "model" / "config.json").read_text())
    assert model_config["max_position_embeddings"] == 128 and model_config["rope_parameters"]["rope_type"] == "linear"
    assert "| extend |" in (paths["eval"] / "report.md").read_text()


def test_reward_and_rl_run_after_sft_and_eval_scores_their_models(root):
    """The default's whole DAG (the smoke preset turns reward and rl off): the reward model and GRPO from the
    cached sft model, then eval has an `rl` model and the reward model's scores; off, eval reads neither."""
    rows = run(root, "reward.enabled=true", "rl.enabled=true")
    assert statuses(rows) == {"data": "cached", "tokenizer": "cached", "pretrain": "cached", "sft": "cached",
                              "align": "cached", "reward": "built", "rl": "built", "eval": "built"}
    paths = {r["stage"]: Path(r["path"]) for r in rows}
    rl = json.loads((paths["rl"] / "manifest.json").read_text())
    assert rl["inputs"]["sft"]["key"] == paths["sft"].name
    assert len(rl["metrics"]["reward_per_step"]) == len(rl["metrics"]["kl_per_step"]) == rl["metrics"]["steps"] == 3
    assert rl["metrics"]["rollout_tokens_per_s"] > 0 and (paths["rl"] / "model" / "config.json").is_file()
    metrics = json.loads((paths["eval"] / "metrics.json").read_text())
    assert {"base", "sft", "aligned", "rl"} <= set(metrics) and "task_accuracy" in metrics["rl"]
    assert set(metrics["reward_model"]["mean_reward"]) >= {"sft", "aligned", "rl"}
    reward = json.loads((paths["reward"] / "manifest.json").read_text())
    assert reward["inputs"]["sft"]["key"] == paths["sft"].name and "val_pair_accuracy" in reward["metrics"]
    smoke_eval = next(step for step in make_plan(config(root)) if step.stage == "eval")
    assert not {"rl", "reward"} & set(smoke_eval.inputs) and smoke_eval.key != paths["eval"].name


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_unknown_key_fails_before_any_work(tmp_path):
    out = _cli("sft.lrr=1", f"run.artifacts_dir={tmp_path / 'a'}", cwd=REPO)
    assert out.returncode != 0
    assert "lrr" in out.stderr + out.stdout
    assert not (tmp_path / "a").exists()


def test_bad_value_fails_before_any_work_naming_it(tmp_path):
    out = _cli("sft.lr=-1", f"run.artifacts_dir={tmp_path / 'a'}", cwd=REPO)
    assert out.returncode == 2
    assert "sft.lr" in out.stderr + out.stdout
    assert not (tmp_path / "a").exists()
