"""Our DPO against TRL's: same tokens, same log-probs, same losses (sigmoid, ipo, hinge).

TRL 1.x computes the loss inside DPOTrainer._compute_loss, fused with its model forward,
so the comparison runs a real (tiny, offline) DPOTrainer on a batch its own collator built,
with a reference model that differs from the policy (non-zero margins). The loss formulas are
compared on a fixed batch of log-probs, TRL's own (its fused LM head, float32), to 1e-6; our
log-probs (sequence_logps, and the prefix-shared packed layout the align stage uses by default)
are compared with those separately, to float32 summation error.
"""
import pytest
import torch

from components.align.batches import pair_logps, shared_pairs_batch
from components.align.config import AlignConfig
from components.align.run import dpo_objective, encode_pair
from components.model.build import build_model
from components.model.config import ModelConfig
from components.tasks import preference_pairs
from components.train.losses import IGNORE, dpo_loss, sequence_logps
from tests.tiny import make_tokenizer_artifact

trl = pytest.importorskip("trl")

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)
MULTI_TURN = {"prompt": [{"role": "user", "content": "Hi "}, {"role": "assistant", "content": "Hello."},
                         {"role": "user", "content": "Sum 2 and 2?\n"}], "chosen": " 4", "rejected": " five"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer_artifact(tmp_path_factory.mktemp("tok")) / "hf")
    policy = build_model(TINY, tokenizer, seed=0).eval()
    reference = build_model(TINY, tokenizer, seed=1).eval()
    pairs = preference_pairs("train", 6) + [MULTI_TURN]
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    return tokenizer, policy, reference, pairs, dataset, tmp_path_factory.mktemp("trl")


def trl_trainer(setup, loss_type: str, beta: float):
    _, policy, reference, _, dataset, out = setup
    args = trl.DPOConfig(output_dir=str(out), report_to=[], use_cpu=True, bf16=False, beta=beta, loss_type=[loss_type],
                         max_length=None)
    return trl.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                          processing_class=setup[0])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_equals_trl(setup, loss_type):
    _, policy, reference, pairs, _, _ = setup
    beta = 0.1 if loss_type != "ipo" else 0.5
    trainer = trl_trainer(setup, loss_type, beta)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])  # [chosen..., rejected...]
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    with torch.no_grad():
        theirs = trainer.compute_loss(policy, batch)
        # the log-probs TRL's loss saw: its fused LM head (installed on both models by the trainer)
        trl_logps = [m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                       fused_lm_head=True, use_cache=False).log_probs.sum(1) for m in (policy, reference)]
        our_logps = [sequence_logps(m, batch["input_ids"], labels, batch["attention_mask"]) for m in (policy, reference)]
    (pc, pr), (rc, rr) = (lp.chunk(2) for lp in trl_logps)
    nc, nr = (labels[:, 1:] != IGNORE).sum(-1).chunk(2)
    assert (pc - rc - pr + rr).abs().min() > 1e-3  # the models differ: margins are not trivially zero
    ours, _, _ = dpo_loss(pc, pr, rc, rr, beta, loss_type, nc, nr)
    torch.testing.assert_close(ours.mean(), theirs, rtol=0, atol=1e-6)
    for mine, trls in zip(our_logps, trl_logps):  # sums of ~20 float32 log-probs of ~-6: measured 4e-6 apart
        torch.testing.assert_close(mine, trls, rtol=0, atol=2e-5)


def test_tokenisation_equals_trl(setup):
    """TRL's prompt/completion split of the same pairs is our encode_pair, token for token."""
    tokenizer, _, _, pairs, _, _ = setup
    trainer = trl_trainer(setup, "sigmoid", 0.1)
    for pair, example in zip(pairs, trainer.train_dataset):
        for (ids, labels), side in zip(encode_pair(tokenizer, pair), ("chosen", "rejected")):
            assert ids == example["prompt_ids"] + example[f"{side}_ids"]
            assert [t for t, l in zip(ids, labels) if l != IGNORE] == example[f"{side}_ids"]


@pytest.mark.parametrize("pack_tokens", [0, 10**4])
def test_prefix_shared_batch_gives_trls_log_probs_and_loss(setup, pack_tokens):
    """Our default layout (align.prefix_sharing: the prompt computed once, pairs packed) scores every
    response as TRL's two padded rows per pair do, and the training objective equals TRL's loss."""
    tokenizer, policy, reference, pairs, _, _ = setup
    trainer = trl_trainer(setup, "sigmoid", 0.1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    encoded = [encode_pair(tokenizer, p) for p in pairs]
    with torch.no_grad():
        theirs = trainer.compute_loss(policy, batch)
        trl_logps = [m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                       fused_lm_head=True, use_cache=False).log_probs.sum(1) for m in (policy, reference)]
        ref = torch.stack(trl_logps[1].chunk(2), 1)  # [pairs, (chosen, rejected)]
        ours = shared_pairs_batch(encoded, list(range(len(pairs))), tokenizer.pad_token_id, pack_tokens, ref=ref)
        loss_sum, _ = dpo_objective(AlignConfig(beta=0.1, rpo_alpha=0.0))(policy, ours)
        logps, slots = pair_logps(policy, ours), ours["pair_index"] >= 0
    mine = torch.empty(len(pairs), 2)
    mine[ours["pair_index"][slots]] = logps[slots]
    torch.testing.assert_close(mine, torch.stack(trl_logps[0].chunk(2), 1), rtol=0, atol=2e-5)
    torch.testing.assert_close(loss_sum / len(pairs), theirs, rtol=0, atol=1e-6)
