"""The reward stage: TRL's RewardTrainer loss on a fixed batch, an export that transformers loads and that
scores as training did, a tiny run that learns a planted preference, config errors naming the key."""
import dataclasses
import json

import pytest
import torch

from components.align.batches import pairs_batch
from components.align.run import encode_pair
from components.context import StageContext
from components.model.config import ModelConfig
from components.reward.config import RewardConfig
from components.reward.model import all_rewards, pair_metrics, pair_rewards, scalar_head_model
from components.reward.run import reward_objective, run
from components.eval.reward_scores import reward_lines, reward_scores
from components.tasks import preference_pairs, sft_examples
from tests.tiny import save_tiny_model, tiny_tokenizer

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)
MULTI_TURN = {"prompt": [{"role": "user", "content": "Hi "}, {"role": "assistant", "content": "Hello."},
                         {"role": "user", "content": "Sum 2 and 2?\n"}], "chosen": " 4", "rejected": " five"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("sft"), tokenizer, TINY, seed=1)


@pytest.mark.parametrize("margin,center", [(0.0, None), (0.5, 0.01)])
def test_pairwise_loss_equals_trl_reward_trainer(tokenizer, sft_dir, tmp_path, margin, center):
    """TRL's RewardTrainer.compute_loss on a batch its own collator built (with a margin column and its
    center_rewards_coefficient) equals our objective on our batch of the same pairs, to 1e-6; its
    tokenisation of each conversation is ours token for token."""
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    model = scalar_head_model(sft_dir / "model", tokenizer.pad_token_id, seed=0).eval()
    pairs = preference_pairs("train", 6) + [MULTI_TURN]
    rows = [{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}], "margin": margin} for p in pairs]
    args = trl.RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, max_length=None,
                            center_rewards_coefficient=center)
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    encoded = [encode_pair(tokenizer, p) for p in pairs]
    for (chosen, rejected), example in zip(encoded, trainer.train_dataset):
        assert chosen[0] == example["chosen_ids"] and rejected[0] == example["rejected_ids"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    cfg = RewardConfig(margin=margin, center_coef=center or 0.0)
    with torch.no_grad():
        theirs = trainer.compute_loss(model.eval(), batch)
        ours = pairs_batch(encoded, list(range(len(pairs))), tokenizer.pad_token_id)
        loss_sum, _ = reward_objective(cfg)(model, ours)
        rewards = pair_rewards(model, ours)
    assert (rewards[:, 0] - rewards[:, 1]).abs().max() > 1e-3  # an untrained head still separates some pairs
    torch.testing.assert_close(loss_sum / len(pairs), theirs, rtol=0, atol=1e-6)


def planted_pairs(n: int) -> list[dict]:
    """Trivially separable: the chosen answer is always "yes", the rejected one always "no"."""
    return [{"prompt": p["prompt"][0]["content"], "chosen": "yes", "rejected": "no"}
            for p in preference_pairs("train", n, seed=3)]


@pytest.mark.parametrize("adapter", ["none", "lora", "adalora"])
def test_tiny_run_learns_a_planted_preference_and_exports_a_loadable_classifier(tokenizer, sft_dir, tmp_path, adapter):
    """reward.adapter: the adapter and the new score head train, the decoder's own weights stay, and the export
    is the same one plain classifier (the adapter merged)."""
    from transformers import AutoModelForSequenceClassification

    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in planted_pairs(120)))
    cfg = RewardConfig(sources=[str(source)], num_pairs=100, num_val_pairs=20, max_steps=20, warmup_steps=2,
                       lr=3e-3, batch_size=8, mixed_precision="no", eval_every=0, adapter=adapter, lora_rank=4,
                       adalora_target_rank=2)
    out = tmp_path / "reward"
    out.mkdir()
    metrics = run(cfg, {"sft": sft_dir}, StageContext.local(out, stage="reward"))
    assert not (out / "model" / "adapter").exists()
    n_params = sum(p.numel() for p in AutoModelForSequenceClassification.from_pretrained(sft_dir / "model", num_labels=1).parameters())
    assert (metrics["trainable_params"] == n_params) == (adapter == "none"), metrics["trainable_params"]
    sft_weights = dict(AutoModelForSequenceClassification.from_pretrained(sft_dir / "model", num_labels=1).named_parameters())
    exported = dict(AutoModelForSequenceClassification.from_pretrained(out / "model").named_parameters())
    moved = {k for k in exported if "score" not in k and not torch.equal(exported[k], sft_weights[k])}
    if adapter == "none":
        assert "model.layers.0.mlp.up_proj.weight" in moved and "model.embed_tokens.weight" in moved
    else:  # only the adapted projections moved (merged in); embeddings and norms are the sft model's
        assert moved and all(k.endswith("proj.weight") for k in moved), moved
    assert metrics["val_pair_accuracy"] > 0.9 and metrics["val_reward_margin"] > 0
    assert metrics["untrained_val_pair_accuracy"] < 0.9  # learnt, not there from the start
    assert metrics["val_chosen_reward"] > metrics["val_rejected_reward"]
    assert metrics["val_pairs"] >= 20 and metrics["train_pairs"] == 100
    # the export: a plain Hugging Face sequence classifier with one label and a pad token
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["pad_token_id"] == tokenizer.pad_token_id
    loaded = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    assert loaded.config.num_labels == 1
    heldout = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    encoded = [encode_pair(tokenizer, p) for p in heldout]
    rewards = all_rewards(loaded, encoded, tokenizer.pad_token_id, batch_size=7)  # padded batches
    for k, v in pair_metrics(rewards).items():  # the manifest's figures, from the loaded model
        assert v == pytest.approx(metrics[k], abs=1e-5), k
    # one conversation through the tokenizer alone (no padding) scores as in the padded batch
    text = tokenizer.apply_chat_template(heldout[0]["prompt"] + [{"role": "assistant", "content": heldout[0]["chosen"]}],
                                         tokenize=False)
    with torch.no_grad():
        alone = loaded(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits
    assert alone.shape == (1, 1) and float(alone) == pytest.approx(float(rewards[0, 0]), abs=1e-5)
    # eval's section: the held-out figures from the manifest, the mean reward of each model's answers
    (out / "manifest.json").write_text(json.dumps({"metrics": metrics}))
    tasks = sft_examples("heldout", 6)
    scores = reward_scores(out, tasks, {"sft": ["yes"] * 6, "base": ["no"] * 6}, 4, torch.device("cpu"))
    assert scores["val_pair_accuracy"] == metrics["val_pair_accuracy"]
    assert scores["mean_reward"]["sft"] > scores["mean_reward"]["base"]  # the planted preference, on new prompts
    assert scores["mean_reward_wrong"] == pytest.approx((scores["mean_reward"]["sft"] + scores["mean_reward"]["base"]) / 2)
    assert reward_lines({"reward_model": scores})[0] == "## Reward model" and reward_lines({"reward_model": {}}) == []


@pytest.mark.parametrize("override,key", [({"margin": -1.0}, "reward.margin"), ({"center_coef": -0.1}, "reward.center_coef"),
                                          ({"adapter": "prefix"}, "reward.adapter"), ({"adapter": "qlora"}, "reward.adapter"),
                                          ({"rejected": "on_policy"}, "reward.rejected"),
                                          ({"format": "hh_rlhf"}, "reward.format"), ({"num_val_pairs": 0}, "reward.num_val_pairs"),
                                          ({"lr": 0.0}, "reward.lr"), ({"sources": [{"path": "x.jsonl", "response_key": "r"}]},
                                                                        "reward.sources[0]")])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ValueError, match=rf"config error: (unknown key )?{key.replace('[', '.').replace(']', '.')}"):
        RewardConfig(**override)


def test_on_by_default_after_sft_eval_reads_it_and_off_it_leaves_the_rest():
    from tests.test_extend import pipeline_config
    from flows.plan import make_plan

    off = {s.stage: s for s in make_plan(pipeline_config("reward.enabled=false"))}
    assert "reward" not in off and "reward" not in off["eval"].sources  # eval's optional role left unfilled
    plan = make_plan(pipeline_config())
    assert [s.stage for s in plan] == ["data", "tokenizer", "pretrain", "sft", "align", "reward", "rl", "eval"]
    steps = {s.stage: s for s in plan}
    assert steps["reward"].inputs == {"sft": steps["sft"].key} and steps["eval"].inputs["reward"] == steps["reward"].key
    assert steps["sft"].key == off["sft"].key and steps["align"].key == off["align"].key
    assert steps["eval"].key != off["eval"].key


def test_a_resumed_reward_run_equals_the_uninterrupted_one(tokenizer, sft_dir, tmp_path, cpu_bf16):
    """Cut at step 3 (step 2's checkpoint left), then run to the end: the losses, the held-out figures and the
    exported head are those of one uninterrupted run (model, optimizer, data position from the checkpoint)."""
    from safetensors.torch import load_file

    cfg = RewardConfig(num_pairs=40, num_val_pairs=10, max_steps=4, warmup_steps=1, lr=3e-3, batch_size=4,
                       mixed_precision="bf16", eval_every=0, save_every=2, log_every=100)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    metrics = run(cfg, {"sft": sft_dir}, StageContext.local(whole, stage="reward"))
    assert metrics["precision"] == ("bf16" if cpu_bf16 else "no")  # this kind of CPU's branch ran
    run(dataclasses.replace(cfg, max_steps=3), {"sft": sft_dir}, StageContext.local(cut, stage="reward"))
    assert any((cut / "checkpoints").iterdir())
    resumed = run(cfg, {"sft": sft_dir}, StageContext.local(cut, stage="reward"))
    losses = [[json.loads(line)["loss"] for line in (d / "log.jsonl").read_text().splitlines()] for d in (whole, cut)]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], abs=1e-6)
    for key in ("val_pair_accuracy", "val_reward_margin", "val_chosen_reward"):
        assert resumed[key] == pytest.approx(metrics[key], abs=1e-6), key
    heads = [load_file(d / "model" / "model.safetensors")["score.weight"] for d in (whole, cut)]
    assert torch.allclose(heads[0], heads[1], atol=1e-6)


def test_pair_accuracy_per_source_shows_what_the_mixed_figure_hides():
    """pair_metrics with groups: each group's accuracy beside the whole set's, and eval's report lists them."""
    from components.eval.reward_scores import reward_lines

    rewards = torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 3 + [[1.0, 0.0]])  # hh: 6 of 6 right; se: 1 of 4
    groups = ["hh"] * 6 + ["se"] * 4
    metrics = pair_metrics(rewards, groups=groups)
    assert metrics["val_pair_accuracy"] == pytest.approx(0.7)
    assert metrics["val_pair_accuracy/hh"] == 1.0 and metrics["val_pair_accuracy/se"] == 0.25
    assert not any("/" in k for k in pair_metrics(rewards, groups=["hh"] * 10))  # one group: the whole figure says it
    with pytest.raises(ValueError, match="9 groups for 10 pairs"):
        pair_metrics(rewards, groups=groups[:9])
    scores = {"val_pair_accuracy": 0.7, "val_reward_margin": 0.4, "mean_reward": {"sft": 0.1},
              "val_pair_accuracy_by_group": {"hh": 1.0, "se": 0.25}}
    report = "\n".join(reward_lines({"reward_model": scores}))
    assert "| hh | 1.000 |" in report and "| se | 0.250 |" in report
