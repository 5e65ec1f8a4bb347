"""Replay of pretraining text in sft (sft.replay) and align (align.replay): the share, the loss, off means off."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.model.build import build_model
from components.model.config import ModelConfig
from components.sft.config import SFTConfig
from components.train.data import load_shard
from components.train.losses import IGNORE, lm_loss
from components.train.replay import with_replay_loss, with_replay_share, with_replay_weight
from tests.tiny import make_tokenizer_artifact

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_artifact(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir / "hf")


@pytest.fixture(scope="module")
def chat_batches(tokenizer):
    """sft's own batch_fn (unpacked) over 40 generated examples, and its config."""
    from components.sft.run import encode_examples, make_batch_fn
    from components.tasks import sft_examples

    rows, _ = encode_examples(tokenizer, [(ex, f"g{i}") for i, ex in enumerate(sft_examples("train", 40))], 64)
    cfg = SFTConfig(batch_size=8, max_steps=10, warmup_steps=1)
    return make_batch_fn(rows, cfg, TINY.context_length, tokenizer.pad_token_id)[0], cfg


@pytest.mark.parametrize("share", [0.25, 0.9])  # 0.9: several windows a batch
def test_replay_makes_the_configured_share_of_every_batch_and_trains_every_token(tok_dir, chat_batches, share):
    batch_fn, cfg = chat_batches
    tokens = load_shard(tok_dir, "train")
    mixed = with_replay_share(batch_fn, tokens, share, TINY.context_length, cfg.seed)
    text = tokens.astype(np.int64).tobytes()
    for step in range(6):
        chat, batch = batch_fn(step, 0), mixed(step, 0)
        for k, v in chat.items():  # the chat rows are untouched
            assert torch.equal(batch[k], v) if isinstance(v, torch.Tensor) else k in ("n_targets", "n_tokens")
        ids, mask, labels = batch["replay_input_ids"], batch["replay_attention_mask"], batch["replay_labels"]
        n_chat, n_replay = int((chat["labels"] != IGNORE).sum()), int((labels[:, 1:] != IGNORE).sum())
        assert batch["n_targets"] == n_chat + n_replay
        assert abs(n_replay / (n_chat + n_replay) - share) <= 1 / (n_chat + n_replay)  # the share, to one token
        assert ids.shape[1] <= TINY.context_length and len(ids) == -(-n_replay // (TINY.context_length - 1))
        # every real token is a target (all but each window's first, which nothing predicts); padding none
        assert torch.equal(labels, torch.where(mask.bool(), ids, IGNORE))
        assert batch["n_tokens"] == chat["n_tokens"] + int(mask.sum())
        for row, m in zip(ids, mask):  # each window is a contiguous slice of the train shard
            assert row[m.bool()].numpy().astype(np.int64).tobytes() in text
    again = mixed(3, 0)  # a pure function of the position: a resumed run replays the same text
    assert torch.equal(again["replay_input_ids"], mixed(3, 0)["replay_input_ids"])
    assert not torch.equal(mixed(3, 0)["replay_input_ids"][:, :8], mixed(3, 1)["replay_input_ids"][:, :8])


def test_replay_loss_is_the_next_token_loss_on_every_replay_token(tok_dir, tokenizer, chat_batches):
    batch_fn, cfg = chat_batches
    model = build_model(TINY, tokenizer, seed=0)
    batch = with_replay_share(batch_fn, load_shard(tok_dir, "train"), 0.25, TINY.context_length, cfg.seed)(0, 0)
    with torch.no_grad():
        total, metrics = with_replay_loss(lm_loss)(model, batch)
        chat, _ = lm_loss(model, batch_fn(0, 0))
        ids, mask = batch["replay_input_ids"], batch["replay_attention_mask"]
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        per_token = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        replay = (per_token * mask[:, 1:].flatten()).sum()  # every real next token, none left out
    torch.testing.assert_close(total, chat + replay, atol=1e-4, rtol=1e-5)
    assert metrics["replay_loss"] == pytest.approx(float(replay) / int(mask[:, 1:].sum()), rel=1e-5)
    # align's weighted form: the objective's sum plus weight x n_targets x the replay mean
    weighted = with_replay_weight(batch_fn, load_shard(tok_dir, "train"), 0.5, 100, TINY.context_length, 0)(0, 0)
    assert weighted["n_targets"] == batch_fn(0, 0)["n_targets"] and int(weighted["replay_attention_mask"][:, 1:].sum()) == 100
    with torch.no_grad():
        total, metrics = with_replay_loss(lm_loss)(model, weighted)
    torch.testing.assert_close(total, chat + 0.5 * weighted["n_targets"] * metrics["replay_loss"], atol=1e-3, rtol=1e-5)


def test_replay_zero_gives_the_previous_batches_and_loss_exactly(chat_batches):
    from components.sft.run import mix_replay

    batch_fn, _ = chat_batches
    assert mix_replay(SFTConfig(replay=0), {}, batch_fn, 64, 400) == (batch_fn, lm_loss)  # no tokenizer input needed


def test_replay_config_errors_name_the_key(tok_dir, chat_batches):
    from components.artifacts import stage_key
    from components.sft.run import mix_replay
    from components.stages import STAGES

    for bad in (1, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"sft\.replay={bad}"):
            SFTConfig(replay=bad)
    batch_fn, _ = chat_batches
    with pytest.raises(ValueError, match=r"sft\.replay=0\.5 mixes pretraining text.*input 'tokenizer'"):
        mix_replay(SFTConfig(), {"pretrain": "p"}, batch_fn, 64, 400)
    with pytest.raises(ValueError, match=r"sft\.replay: the train shard has token id \d+, outside the model's vocabulary of 10"):
        mix_replay(SFTConfig(), {"tokenizer": tok_dir}, batch_fn, 64, 10)
    key = lambda cfg: stage_key("sft", cfg, {"pretrain": "p", "tokenizer": "t"}, STAGES["sft"].module)  # noqa: E731
    assert key(SFTConfig(replay=0)) != key(SFTConfig()) == key(SFTConfig(replay=0.5))  # in the cache key
    assert STAGES["sft"].needs["tokenizer"] == "tokenizer"


def test_a_rank_whose_shard_has_no_replay_window_still_makes_the_replay_forward(tokenizer, tok_dir, chat_batches):
    """One replay window and two ranks (sft.replay=0.5 on a small batch): the rank without it must still run a
    second forward, since DDP broadcasts buffers at every forward and unequal counts hang both ranks (seen on
    the two-machine test). Its loss and gradients are the chat rows' alone."""
    from components.train.loop import shard

    batch_fn, _ = chat_batches
    tokens = load_shard(tok_dir, "train")
    batch = with_replay_share(batch_fn, tokens, 0.5, 64, seed=0)(0, 0)
    assert len(batch["replay_input_ids"]) == 1  # one window: rank 1 of 2 gets none
    empty = shard(batch, 1, 2)
    assert len(empty["replay_input_ids"]) == 0
    model = build_model(TINY, tokenizer, seed=0)
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    total, metrics = with_replay_loss(lm_loss)(model, empty)
    assert len(forwards) == 2 and metrics["replay_loss"] == 0.0
    own, _ = lm_loss(model, {k: v for k, v in empty.items() if not k.startswith("replay_")})
    assert float(total) == pytest.approx(float(own), abs=1e-6)
    total.backward()  # the weightless forward joins the graph: DDP sees one backward over both
