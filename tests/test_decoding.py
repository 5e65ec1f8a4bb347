"""Decoding strategies (eval.decoding): pass@k, seeded sampling, beam search, config-time checks."""
import math

import pytest
import torch

from components.chat.generate import generate
from components.eval.config import EvalConfig
from components.eval.decoding import DECODING_KEYS, SET_ELSEWHERE, pass_at_k, score_strategy
from components.model.build import build_model
from components.model.config import ModelConfig
from components.tasks import sft_examples
from tests.tiny import make_tokenizer_artifact

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer_artifact(tmp_path_factory.mktemp("tok")) / "hf")
    return build_model(TINY, tokenizer, seed=0).eval(), tokenizer


PROMPTS = [ex["messages"][:-1] for ex in sft_examples("heldout", 6)]


def test_pass_at_k_matches_hand_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 1 - 3/10
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 4, 2) == 1.0 and pass_at_k(1, 1, 1) == 1.0
    scores = score_strategy([[True, False, False], [False, False, False]], [1, 2, 5])
    assert scores["task_accuracy"] == pytest.approx(1 / 6) == pytest.approx(scores["pass@1"])
    assert scores["pass@2"] == pytest.approx((1 - 1 / 3) / 2) and "pass@5" not in scores  # k > n: not estimable
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)


def test_a_sampling_strategy_is_reproducible_with_its_seed(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    sample = dict(do_sample=True, temperature=1.5, top_p=0.95)
    first = generate(model, tokenizer, PROMPTS, 8, batch_size=3, num_return_sequences=2, seed=0, **sample)
    torch.manual_seed(123)  # whatever ran before: the seed decides
    again = generate(model, tokenizer, PROMPTS, 8, batch_size=3, num_return_sequences=2, seed=0, **sample)
    other = generate(model, tokenizer, PROMPTS, 8, batch_size=3, num_return_sequences=2, seed=1, **sample)
    assert len(first) == 2 * len(PROMPTS) and first == again and first != other


def test_beam_search_with_one_beam_is_greedy_and_wider_beams_run(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    greedy = generate(model, tokenizer, PROMPTS, 8, batch_size=4)
    assert generate(model, tokenizer, PROMPTS, 8, batch_size=4, num_beams=1) == greedy
    assert generate(model, tokenizer, PROMPTS, 8, batch_size=6, num_beams=1, length_penalty=1.0) == greedy  # padding
    beams = generate(model, tokenizer, PROMPTS, 8, batch_size=4, num_beams=3)
    assert len(beams) == len(PROMPTS)


def test_a_bad_strategy_fails_at_config_time_naming_the_key():
    with pytest.raises(ValueError, match=r"unknown key eval\.decoding\.beam\.num_beam: did you mean eval\.decoding\.beam\.num_beams"):
        EvalConfig(decoding={"beam": {"num_beam": 4}})
    with pytest.raises(ValueError, match=r"eval\.decoding\.warm\.temperature.*do_sample: true"):
        EvalConfig(decoding={"warm": {"temperature": 0.7}})  # transformers would ignore it and decode greedily
    with pytest.raises(ValueError, match=r"eval\.decoding\.s\.top_p=1\.5"):
        EvalConfig(decoding={"s": {"do_sample": True, "top_p": 1.5}})
    with pytest.raises(ValueError, match=r"eval\.decoding\.g\.max_new_tokens.*eval\.max_new_tokens"):
        EvalConfig(decoding={"g": {"max_new_tokens": 5}})
    with pytest.raises(ValueError, match=r"eval\.pass_k"):
        EvalConfig(pass_k=[1, 10], num_return_sequences=5)
    from flows.compose import compose_pipeline_config

    cfg = compose_pipeline_config(["eval.decoding={greedy: {}, beam4: {num_beams: 4, length_penalty: 0.8}}"])
    assert cfg.eval.decoding == {"greedy": {}, "beam4": {"num_beams": 4, "length_penalty": 0.8}}
    with pytest.raises(ValueError, match=r"eval\.decoding\.beam4\.beams"):
        compose_pipeline_config(["eval.decoding={beam4: {beams: 4}}"])


def test_every_allowed_kwarg_is_a_generation_config_field():
    from transformers import GenerationConfig

    fields = set(vars(GenerationConfig()))
    assert set(DECODING_KEYS) <= fields and set(SET_ELSEWHERE) <= fields
