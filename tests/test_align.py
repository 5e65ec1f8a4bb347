"""DPO: the bugs users hit elsewhere, tested here."""
import json
import math

import pytest
import torch

from components.align.config import AlignConfig
from components.align.batches import shared_pairs_batch
from components.align.run import dpo_objective, encode_pair, pair_logps, pairs_batch
from components.chat.batches import pad_batch
from components.context import StageContext
from components.model.build import build_model
from components.model.config import ModelConfig
from components.tasks import preference_pairs
from components.train.losses import IGNORE, dpo_loss, sequence_logps
from tests.tiny import make_tokenizer_artifact, save_tiny_model

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_artifact(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir / "hf")


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("sft"), tokenizer, TINY, seed=1)


# prompts ending in a space or newline, answers starting with one: where tokenisers merge across the boundary
EDGE_PAIRS = [
    {"prompt": [{"role": "user", "content": "What is 2 + 2? "}], "chosen": " 4", "rejected": " 5"},
    {"prompt": [{"role": "user", "content": "Name a colour.\n"}], "chosen": "\nred", "rejected": " blue"},
    {"prompt": [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hi\n\n"},
                {"role": "assistant", "content": " Hello."}, {"role": "user", "content": "Sort b a "}],
     "chosen": " a b", "rejected": "b a"},
]


def test_prompt_boundary_is_tokenised_the_same_in_chosen_and_rejected(tokenizer):
    for pair in preference_pairs("train", 30) + EDGE_PAIRS:
        (c_ids, c_lab), (r_ids, r_lab) = encode_pair(tokenizer, pair)
        c_first = next(i for i, l in enumerate(c_lab) if l != IGNORE)
        r_first = next(i for i, l in enumerate(r_lab) if l != IGNORE)
        # the prompt is the same token prefix in both, and the one generation sees (chat.generate)
        prompt_text = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        assert c_first == r_first == len(prompt_ids)
        assert c_ids[:c_first] == r_ids[:r_first] == prompt_ids
        # the labels are exactly the final answer and its <|end|>, nothing of the prompt
        for ids, labels, answer in ((c_ids, c_lab, pair["chosen"]), (r_ids, r_lab, pair["rejected"])):
            assert all(l == IGNORE for l in labels[:c_first]) and labels[c_first:] == ids[c_first:]
            assert tokenizer.decode(ids[c_first:]).replace(" ", "") == (answer + "<|end|>").replace(" ", "")


def test_exactly_one_bos(tokenizer):
    for pair in preference_pairs("train", 10) + EDGE_PAIRS:
        for ids, _ in encode_pair(tokenizer, pair):
            assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_multi_turn_prompt_trains_only_the_final_answer(tokenizer):
    pair = EDGE_PAIRS[2]
    (ids, labels), _ = encode_pair(tokenizer, pair)
    trained = [t for t, l in zip(ids, labels) if l != IGNORE]
    assert tokenizer.decode(trained).replace(" ", "") == "ab<|end|>"  # not the earlier " Hello." turn


def test_logps_identical_with_and_without_padding(tokenizer):
    """A short pair batched with a much longer one (right padding) scores as it does alone."""
    model = build_model(TINY, tokenizer, seed=0).eval()
    long_pair = {"prompt": [{"role": "user", "content": "Repeat: alpha beta gamma"},
                            {"role": "assistant", "content": "alpha beta gamma"},
                            {"role": "user", "content": "Again, twice."}],
                 "chosen": "alpha beta gamma alpha", "rejected": "no"}
    encoded = [encode_pair(tokenizer, p) for p in preference_pairs("train", 2) + [long_pair]]
    lengths = [len(seq[0]) for pair in encoded for seq in pair]
    assert max(lengths) <= TINY.context_length and max(lengths) > 2 * min(lengths)  # real padding
    with torch.no_grad():
        together = pair_logps(model, pairs_batch(encoded, [0, 1, 2], tokenizer.pad_token_id))
        for i in range(3):
            alone = pair_logps(model, pairs_batch(encoded, [i], tokenizer.pad_token_id))
            torch.testing.assert_close(together[i], alone[0], rtol=0, atol=1e-5)


SHARED_ANSWER_START = [  # the first answer tokens are common too: they join the shared prefix
    {"prompt": [{"role": "user", "content": "Sort b a c"}], "chosen": "a b c", "rejected": "a c b"},
    {"prompt": [{"role": "user", "content": "Same?"}], "chosen": "yes", "rejected": "yes"},
]


def by_pair(batch: dict, logps: torch.Tensor, n: int) -> torch.Tensor:
    """[n, 2] from a packed batch's [rows, slots, 2], in the order of the idx it was built from."""
    out, slots = torch.full((n, 2), float("nan")), batch["pair_index"] >= 0
    out[batch["pair_index"][slots]] = logps[slots]
    return out


@pytest.mark.parametrize("pack_tokens,groups,attention", [(0, 1, "sdpa"), (40, 1, "sdpa"), (128, 2, "sdpa"),
                                                         (10**4, 3, "sdpa"), (40, 1, "eager")])
def test_prefix_shared_logps_equal_two_rows_per_pair(tokenizer, pack_tokens, groups, attention):
    """One row per pair (or several pairs per row), the prompt computed once: every response scores as
    in its own padded row, in fp32 to summation error; the first answer token of both branches included."""
    model = build_model(TINY, tokenizer, seed=0).eval()
    model.set_attn_implementation(attention)
    assert model.config._attn_implementation == attention
    pairs = preference_pairs("train", 9) + EDGE_PAIRS + SHARED_ANSWER_START
    encoded = [encode_pair(tokenizer, p) for p in pairs]
    idx = list(range(len(pairs)))[::-1]
    with torch.no_grad():
        plain = pair_logps(model, pairs_batch(encoded, idx, tokenizer.pad_token_id))
        batch = shared_pairs_batch(encoded, idx, tokenizer.pad_token_id, pack_tokens, groups)
        shared = by_pair(batch, pair_logps(model, batch), len(idx))
    torch.testing.assert_close(shared, plain, rtol=0, atol=1e-5)
    assert batch["n_tokens"] < pairs_batch(encoded, idx, tokenizer.pad_token_id)["n_tokens"]  # the prompts once
    n_response = torch.stack([batch["n_response"][r, s] for r, s in
                              sorted(zip(*torch.nonzero(batch["pair_index"] >= 0, as_tuple=True)),
                                     key=lambda rs: int(batch["pair_index"][rs]))])
    assert torch.equal(n_response, pairs_batch(encoded, idx, tokenizer.pad_token_id)["n_response"])
    if pack_tokens == 40:
        assert batch["pair_index"].shape[1] > 1  # several pairs share a row


def test_sharded_packed_batch_gives_each_rank_its_pairs_and_the_same_loss(tokenizer):
    """The loop splits rows between ranks (loop.shard): each rank gets the pairs pairs_batch would give
    it, and the shards' losses add up to the whole batch's."""
    from components.train.loop import shard

    model = build_model(TINY, tokenizer, seed=0).eval()
    encoded = [encode_pair(tokenizer, p) for p in preference_pairs("train", 11)]
    idx, ref = list(range(11)), -torch.rand(11, 2) * 10
    loss_fn = dpo_objective(AlignConfig(loss="ipo"))
    whole = shared_pairs_batch(encoded, idx, tokenizer.pad_token_id, 64, 1, ref)
    with torch.no_grad():
        total = loss_fn(model, whole)[0]
        parts = []
        for rank in range(2):
            mine = shard(shared_pairs_batch(encoded, idx, tokenizer.pad_token_id, 64, 2, ref), rank, 2)
            plain = shard(pairs_batch(encoded, idx, tokenizer.pad_token_id, ref), rank, 2)
            got = mine["pair_index"][mine["pair_index"] >= 0].tolist()
            assert sorted(got) == plain["pair_index"].tolist()
            parts.append(loss_fn(model, mine)[0])
            torch.testing.assert_close(parts[-1], loss_fn(model, plain)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(sum(parts), total, rtol=0, atol=1e-5)


def test_prefix_sharing_changes_no_result(sft_dir, tmp_path):
    """Reference log-probs, losses and held-out metrics with align.prefix_sharing on (packed) and off
    agree in fp32; the switch is log only (not in the cache key)."""
    from components.align.run import run
    from components.config import output_relevant

    base = dict(max_steps=4, warmup_steps=1, batch_size=8, lr=5e-3, num_pairs=32, num_val_pairs=16, rpo_alpha=0.5,
                mixed_precision="no", log_every=1, rejected="generated", replay=0)
    results = {}
    for shared in (True, False):
        out = tmp_path / str(shared)
        out.mkdir()
        metrics = run(AlignConfig(prefix_sharing=shared, **base), {"sft": sft_dir}, StageContext.local(out))
        results[shared] = (metrics, torch.load(out / "ref_logps.pt"),
                           [json.loads(l)["loss"] for l in (out / "log.jsonl").read_text().splitlines()])
    (m_on, ref_on, loss_on), (m_off, ref_off, loss_off) = results[True], results[False]
    for split in ("train", "heldout"):  # sequence log-probs of ~-80: fp32 summation order moves them by ~1e-5
        torch.testing.assert_close(ref_on[split], ref_off[split], rtol=1e-6, atol=1e-5)
    assert loss_on == pytest.approx(loss_off, abs=1e-5)
    for key in ("val_reward_accuracy", "val_reward_margin", "val_preference_accuracy"):
        assert m_on[key] == pytest.approx(m_off[key], abs=1e-5)
    assert output_relevant(AlignConfig(prefix_sharing=False, pack_tokens=0)) == output_relevant(AlignConfig())


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
                      mixed_precision="no", log_every=1, rejected="generated", replay=0)
    metrics = run(cfg, {"sft": sft_dir}, StageContext.local(tmp_path))
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
    with pytest.raises(ValueError, match=r"align\.pack_tokens"):
        AlignConfig(pack_tokens=-1)
    with pytest.raises(ValueError, match=r"align\.replay=-1"):
        AlignConfig(replay=-1)
    with pytest.raises(ValueError, match=r"align\.replay_tokens=0"):
        AlignConfig(replay_tokens=0)


def test_rpo_term_adds_the_chosen_nll(sft_dir, tmp_path):
    """With rpo_alpha, step 0's loss is ln 2 plus alpha times the chosen answers' per-token NLL."""
    from components.align.run import run

    base = dict(max_steps=1, warmup_steps=0, batch_size=8, num_pairs=8, num_val_pairs=8, mixed_precision="no", log_every=1,
                rejected="generated", replay=0)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    run(AlignConfig(rpo_alpha=0.0, **base), {"sft": sft_dir}, StageContext.local(tmp_path / "a"))
    run(AlignConfig(rpo_alpha=0.5, **base), {"sft": sft_dir}, StageContext.local(tmp_path / "b"))
    pure = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[0])["loss"]
    mixed = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[0])["loss"]
    assert pure == pytest.approx(math.log(2), abs=1e-4)
    assert mixed > pure + 0.5  # a random model's NLL per token is several nats


def test_replay_adds_its_weighted_next_token_loss_on_pretraining_text(sft_dir, tok_dir, tmp_path):
    """align.replay: step 0's loss is ln 2 (policy = reference) plus the weight times the replay windows' mean NLL."""
    from components.align.run import run

    cfg = AlignConfig(max_steps=1, warmup_steps=0, batch_size=8, num_pairs=8, num_val_pairs=8, mixed_precision="no",
                      log_every=1, rejected="generated", rpo_alpha=0.0, replay=0.5, replay_tokens=100)
    run(cfg, {"sft": sft_dir, "tokenizer": tok_dir}, StageContext.local(tmp_path))
    row = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert row["replay_loss"] > 3  # a random model's NLL per token on prose is several nats
    assert row["loss"] == pytest.approx(math.log(2) + 0.5 * row["replay_loss"], abs=1e-4)
    with pytest.raises(ValueError, match=r"align\.replay=0\.5 adds a language-model loss.*input 'tokenizer'"):
        run(cfg, {"sft": sft_dir}, StageContext.local(tmp_path / "again"))


def test_on_policy_rejected_are_the_models_own_wrong_answers(sft_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from components.align.run import with_own_mistakes
    from components.chat.generate import generate

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


# --- preference files as sources -------------------------------------------------------------

def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


MIXED = [
    {"prompt": "What is 3 + 4?", "chosen": "7", "rejected": "8"},  # line 1: strings
    {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},  # 2: multi-turn
                {"role": "user", "content": "Sort: c a b"}],
     "chosen": [{"role": "assistant", "content": "a b c"}], "rejected": "c b a"},
    {"chosen": "\n\nHuman: Reverse abc\n\nAssistant: cba", "rejected": "\n\nHuman: Reverse abc\n\nAssistant: abc"},  # 3: HH
    {"prompt": "What is 5 + 5?", "chosen": "10"},  # line 4: no rejected answer
    "{not json",  # line 5
    {"conversations": [{"from": "human", "value": "Capital of France?"}],  # 6: LLaMA-Factory
     "chosen": {"from": "gpt", "value": "Paris"}, "rejected": {"from": "gpt", "value": "Rome"}},
]


def test_sources_strict_fails_naming_file_line_and_field(sft_dir, tmp_path):
    from components.align.run import run
    from components.chat.formats import FormatError

    src = _write_jsonl(tmp_path / "prefs.jsonl", MIXED)
    cfg = AlignConfig(sources=[str(src)], strict=True, max_steps=1, warmup_steps=0, num_val_pairs=1, replay=0)
    (tmp_path / "out").mkdir()
    with pytest.raises(FormatError, match=r"prefs\.jsonl:4: field 'rejected'"):
        run(cfg, {"sft": sft_dir}, StageContext.local(tmp_path / "out"))


def test_sources_quarantine_and_train(sft_dir, tmp_path):
    from components.align.run import run

    src = _write_jsonl(tmp_path / "prefs.jsonl", MIXED)
    cfg = AlignConfig(sources=[str(tmp_path / "*.jsonl")], max_steps=2, warmup_steps=0, batch_size=2, num_val_pairs=1,
                      mixed_precision="no", rpo_alpha=0.0, log_every=1, replay=0)
    assert cfg.rejected_from == "dataset"  # auto: the sources' own rejected answers, never replaced
    (tmp_path / "out").mkdir()
    metrics = run(cfg, {"sft": sft_dir}, StageContext.local(tmp_path / "out"))
    assert (metrics["source_pairs"], metrics["quarantined_pairs"], metrics["too_long_pairs"]) == (4, 2, 0)
    assert (metrics["train_pairs"], metrics["val_pairs"]) == (3, 1)
    rows = [json.loads(l) for l in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [r["where"] for r in rows] == [f"{src}:4", f"{src}:5"]
    assert "rejected" in rows[0]["reason"] and "invalid JSON" in rows[1]["reason"]
    log = [json.loads(l) for l in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) and len(log) == 2


def test_sources_too_long_pairs_are_left_out_with_a_reason(sft_dir, tmp_path):
    from components.align.run import run

    long = {"prompt": "Repeat " + "words and more words " * 20, "chosen": "ok", "rejected": "no"}
    src = _write_jsonl(tmp_path / "p.jsonl", [MIXED[0], MIXED[1], long, MIXED[5]])
    cfg = AlignConfig(sources=[str(src)], max_steps=1, warmup_steps=0, batch_size=2, num_val_pairs=1, mixed_precision="no",
                      replay=0)
    (tmp_path / "out").mkdir()
    metrics = run(cfg, {"sft": sft_dir}, StageContext.local(tmp_path / "out"))
    assert (metrics["too_long_pairs"], metrics["quarantined_pairs"], metrics["train_pairs"]) == (1, 0, 2)
    [row] = [json.loads(l) for l in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert row["where"] == f"{src}:3" and "context of 64" in row["reason"]


def test_heldout_split_is_by_prompt_not_file_order():
    from components.align.run import split_heldout

    pairs = [{"prompt": [{"role": "user", "content": f"q{i % 7}"}], "chosen": "a", "rejected": f"b{i}"} for i in range(30)]
    train, held = split_heldout(pairs, 5)
    held_prompts = {pairs[i]["prompt"][0]["content"] for i in held}
    assert len(held) >= 5 and not held_prompts & {pairs[i]["prompt"][0]["content"] for i in train}
    rev = pairs[::-1]
    assert {rev[i]["prompt"][0]["content"] for i in split_heldout(rev, 5)[1]} == held_prompts
    with pytest.raises(ValueError, match=r"align\.num_val_pairs"):
        split_heldout(pairs, 30)


def test_source_content_is_in_the_cache_key(tmp_path):
    from components.artifacts import stage_key
    from components.stages import STAGES

    src = _write_jsonl(tmp_path / "p.jsonl", MIXED[:1])
    key = lambda: stage_key("align", AlignConfig(sources=[str(src)]), {"sft": "k"}, STAGES["align"].module)  # noqa: E731
    before = key()
    assert key() == before
    _write_jsonl(src, [{**MIXED[0], "chosen": "seven"}])  # same name and size class, new content
    assert key() != before


def test_source_config_combinations_are_checked(tmp_path):
    src = str(_write_jsonl(tmp_path / "p.jsonl", MIXED[:1]))
    with pytest.raises(ValueError, match=r"align\.rejected='on_policy'.*sources"):
        AlignConfig(sources=[src], rejected="on_policy")
    with pytest.raises(ValueError, match=r"align\.rejected='dataset'.*needs align\.sources"):
        AlignConfig(rejected="dataset")
    with pytest.raises(ValueError, match=r"align\.format='hh_rlhf'.*only applies"):
        AlignConfig(format="hh_rlhf")
    with pytest.raises(ValueError, match=r"align\.format='csv'"):
        AlignConfig(sources=[src], format="csv")
    with pytest.raises(FileNotFoundError, match=r"align\.sources: no file matches"):
        AlignConfig(sources=[str(tmp_path / "missing*.jsonl")])
    (tmp_path / "p.txt").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"align\.sources='.*p\.txt'"):
        AlignConfig(sources=[str(tmp_path / "p.*")])
    assert AlignConfig(sources=[src], format="prompt_chosen_rejected").rejected_from == "dataset"
    assert AlignConfig().rejected_from == "generated"


@pytest.fixture(scope="module")
def sft_dir_256(tmp_path_factory, tokenizer):
    """A tiny model with room for real preference data (HH transcripts run to hundreds of tokens)."""
    root = tmp_path_factory.mktemp("sft256")
    build_model(ModelConfig(**{**TINY.__dict__, "context_length": 256}), tokenizer, seed=1).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def test_real_preference_samples_train(samples, sft_dir_256, tmp_path):
    """HH-RLHF, LLaMA-Factory and StackExchange files together, multi-turn prompts included."""
    from components.align.run import run

    cfg = AlignConfig(sources=[str(samples / "preference" / "*.json*")], max_steps=2, warmup_steps=0, batch_size=4,
                      num_val_pairs=16, lr=5e-3, rpo_alpha=0.0, mixed_precision="no", log_every=1, replay=0)
    metrics = run(cfg, {"sft": sft_dir_256}, StageContext.local(tmp_path))
    # 274 well-formed pairs; the one malformed record (an HH pair with an empty chosen answer) quarantined
    assert (metrics["source_pairs"], metrics["quarantined_pairs"]) == (274, 1)
    assert metrics["train_pairs"] + metrics["val_pairs"] + metrics["too_long_pairs"] == 274
    assert metrics["train_pairs"] > 50 and metrics["val_pairs"] >= 16
    rows = [json.loads(l) for l in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + metrics["too_long_pairs"]
    assert rows[0]["where"].endswith("hh_rlhf_harmless_base_test_200.jsonl:87") and "chosen answer is empty" in rows[0]["reason"]
    assert all("context of 256" in r["reason"] for r in rows[1:])
    log = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) and abs(log[-1]["loss"] - math.log(2)) > 1e-4
