"""DPO: the bugs users hit elsewhere, tested here."""
import json
import math

import pytest
import torch

from components.align.config import AlignConfig
from components.align.run import encode_pair
from components.model.build import build_model
from components.model.config import ModelConfig
from components.tasks import preference_pairs
from components.train.chat import pad_batch
from components.train.losses import IGNORE, dpo_loss, sequence_logps
from tests.tiny import make_tokenizer_artifact

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tokenizer_artifact(tmp_path_factory.mktemp("tok")) / "hf")


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("sft")
    model = build_model(TINY, tokenizer, seed=1)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def test_prompt_boundary_is_tokenised_the_same_in_chosen_and_rejected(tokenizer):
    for pair in preference_pairs("train", 50):
        (c_ids, c_lab), (r_ids, r_lab) = encode_pair(tokenizer, pair)
        c_first = next(i for i, l in enumerate(c_lab) if l != IGNORE)
        r_first = next(i for i, l in enumerate(r_lab) if l != IGNORE)
        assert c_first == r_first and c_ids[:c_first] == r_ids[:r_first]
        assert c_ids[0] == tokenizer.bos_token_id and c_ids[1] != tokenizer.bos_token_id


def test_logps_identical_with_and_without_padding(tokenizer):
    model = build_model(TINY, tokenizer, seed=0).eval()
    pairs = preference_pairs("train", 4)
    rows = [encode_pair(tokenizer, p)[0] for p in pairs]
    rows.append((list(range(8, 8 + 40)), [IGNORE] * 20 + list(range(28, 48))))  # forces padding
    with torch.no_grad():
        batch = pad_batch(rows, tokenizer.pad_token_id)
        together = sequence_logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"])
        for i, row in enumerate(rows):
            alone = pad_batch([row], tokenizer.pad_token_id)
            single = sequence_logps(model, alone["input_ids"], alone["labels"], alone["attention_mask"])
            assert torch.allclose(together[i], single[0], atol=1e-4)


def test_dpo_loss_matches_the_paper_formula():
    pc, pr, rc, rr = (torch.tensor([-3.0, -1.0]), torch.tensor([-4.0, -0.5]),
                      torch.tensor([-3.5, -1.2]), torch.tensor([-3.9, -0.7]))
    beta = 0.2
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    expected = [-math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d))))) for a, b, c, d in zip(pc, pr, rc, rr)]
    assert torch.allclose(losses, torch.tensor(expected), atol=1e-6)


def test_loss_starts_at_ln2_and_moves(sft_dir, tmp_path):
    from components.align.run import run

    cfg = AlignConfig(max_steps=8, warmup_steps=1, batch_size=8, lr=5e-3, num_pairs=64, num_val_pairs=16, rpo_alpha=0.0,
                      mixed_precision="no", log_every=1)
    metrics = run(cfg, {"sft": sft_dir}, tmp_path)
    rows = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(rows[-1]["loss"] - math.log(2)) > 1e-3  # the policy moved away from the reference
    assert rows[-1]["reward_margin"] != 0.0
    assert (tmp_path / "ref_logps.pt").is_file()
    assert "val_reward_accuracy" in metrics


def test_bad_align_values_name_their_key():
    with pytest.raises(ValueError, match=r"align\.beta"):
        AlignConfig(beta=0)
    with pytest.raises(ValueError, match=r"align\.loss"):
        AlignConfig(loss="kto")


def test_rpo_term_adds_the_chosen_nll(sft_dir, tmp_path):
    """With rpo_alpha, step 0's loss is ln 2 plus alpha times the chosen answers' per-token NLL."""
    from components.align.run import run

    base = dict(max_steps=1, warmup_steps=0, batch_size=8, num_pairs=8, num_val_pairs=8, mixed_precision="no", log_every=1)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    run(AlignConfig(rpo_alpha=0.0, **base), {"sft": sft_dir}, tmp_path / "a")
    run(AlignConfig(rpo_alpha=0.5, **base), {"sft": sft_dir}, tmp_path / "b")
    pure = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[0])["loss"]
    mixed = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[0])["loss"]
    assert pure == pytest.approx(math.log(2), abs=1e-4)
    assert mixed > pure + 0.5  # a random model's NLL per token is several nats


def test_on_policy_rejected_are_the_models_own_wrong_answers(sft_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from components.align.run import with_own_mistakes
    from components.train.chat import generate

    model = AutoModelForCausalLM.from_pretrained(sft_dir / "model")
    cfg = AlignConfig(num_pairs=12, batch_size=4, rejected_max_new_tokens=6)
    pairs = preference_pairs("train", 12)
    own = generate(model, tokenizer, [p["prompt"] for p in pairs], 6, batch_size=16)
    pairs[0] = {**pairs[0], "chosen": own[0]}  # here the model happens to be right: nothing to replace
    out, replaced = with_own_mistakes(model, tokenizer, pairs, cfg)
    assert out[0]["rejected"] == pairs[0]["rejected"]
    wrong = [i for i in range(1, 12) if own[i] and own[i].strip() != pairs[i]["chosen"].strip()]
    assert replaced == len(wrong) > 0
    assert all(out[i]["rejected"] == own[i] for i in wrong)
    assert [p["chosen"] for p in out] == [p["chosen"] for p in pairs]  # chosen answers untouched
