"""Eval stage on hermetic tiny artifacts: every metric checked against a direct computation."""
import html
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.context import StageContext
from components.eval import metrics as m
from components.eval.config import EvalConfig
from components.eval.run import run
from components.tasks import preference_pairs, sft_examples
from components.model.export import save_export
from tests.tiny import make_tokenizer_artifact

REPO = Path(__file__).resolve().parents[1]
CONTEXT = 64
CFG = dict(num_tasks=8, num_pairs=6, max_val_tokens=400, max_new_tokens=4, num_samples=1, seed=0, benchmark_items=6,
           decoding={"greedy": {}, "top_p": {"do_sample": True, "top_p": 0.9}}, num_return_sequences=3, pass_k=[1, 2],
           benchmarks=[{"name": "embedded_choice", "task": "arc_easy", "path": None}],  # the others: test_benchmarks
           passkey_lengths=[2], passkey_depths=[0, 1], passkey_trials=1)  # 1x of 64 tokens: too short for the key
MODELS = {"base": "pretrain", "sft": "sft", "aligned": "align"}


def _tiny_model(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.5,  # peaked logits: no near-ties
    ))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("eval_inputs")
    tok_dir = make_tokenizer_artifact(root / "tokenizer")
    (tok_dir / "manifest.json").write_text(json.dumps({"stage": "tokenizer", "metrics": {"bytes_per_token": 2.0}}))
    (root / "data").mkdir()
    (root / "data" / "manifest.json").write_text(json.dumps({"stage": "data", "metrics": {"docs_in": 7}}))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir / "hf")
    paths = {"data": root / "data", "tokenizer": tok_dir}
    for seed, stage in enumerate(MODELS.values()):
        paths[stage] = root / stage
        save_export(_tiny_model(tokenizer, seed), tokenizer, root / stage / "model")  # as the training stages export
        rows = [{"step": s, "loss": 5.0 - s / 10, "lr": 1e-3, "tokens": 64 * s} for s in range(1, 11)]
        rows += [{"step": 5, "val_loss": 4.7}, {"step": 10, "val_loss": 4.3}]
        (root / stage / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / stage / "manifest.json").write_text(json.dumps({"stage": stage, "metrics": {"val_loss": 4.3}}))
    return paths


def _run(inputs, out_dir: Path, batch_size: int) -> tuple[dict, dict]:
    out_dir.mkdir()
    flat = run(EvalConfig(batch_size=batch_size, **CFG), inputs, StageContext.local(out_dir))
    return flat, json.loads((out_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def result(inputs, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval") / "out"
    return _run(inputs, out_dir, batch_size=3) + (inputs, out_dir)


def _model(inputs, stage):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = inputs[stage] / "model"
    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def test_metrics_json_structure_and_ranges(result):
    flat, metrics, *_ = result
    assert metrics["unigram_ppl"] > 1
    tasks = {ex["task"] for ex in sft_examples("heldout", CFG["num_tasks"])}
    for name in MODELS:
        r = metrics[name]
        assert 1 < r["val_ppl"] < math.inf
        assert 0 <= r["task_accuracy"] <= 1 and 0 <= r["preference_accuracy"] <= 1
        assert set(metrics["per_task"][name]) == tasks
        assert r["val_bits_per_byte"] == pytest.approx(math.log2(r["val_ppl"]) / 2.0)
        for key in ("val_ppl", "task_accuracy", "preference_accuracy"):
            assert flat[f"{name}/{key}"] == r[key]
        bench = r["benchmarks"]["embedded_choice"]  # scored by lm-evaluation-harness (tests/test_benchmarks.py)
        assert bench["metric"] == "acc,none" and bench["n"] == 6 and 0 <= bench["value"] <= 1
        assert flat[f"{name}/benchmarks/embedded_choice"] == bench["value"]
        passkey = r["passkey"]  # no extend in this run: the four RoPE conditions
        assert {k: v for k, v in passkey.items() if k not in ("n", "context")}.keys() == {"none", "linear", "dynamic", "yarn"}
        assert passkey["n"] == 1 and passkey["context"] == CONTEXT
        assert all(set(grid) == {"2"} and set(grid["2"]) == {"0", "1"} for k, grid in passkey.items() if isinstance(grid, dict))
    assert flat["unigram_ppl"] == metrics["unigram_ppl"]
    assert all(isinstance(v, (int, float, str)) for v in flat.values())


def test_unigram_ppl_matches_a_hand_computation():
    train = np.array([0, 1, 1, 2], dtype=np.uint16)  # counts + 1 over vocab 4: [2, 3, 2, 1] / 8
    windows = torch.tensor([[3, 2, 1], [0, 0, 3]])  # targets 2, 1, 0, 3 (first token of a window is context)
    expected = math.exp(-(math.log(2 / 8) + math.log(3 / 8) + math.log(2 / 8) + math.log(1 / 8)) / 4)
    assert m.unigram_ppl(train, windows, vocab_size=4) == pytest.approx(expected)


def test_unigram_ppl_of_the_run_is_scored_on_the_models_windows(result):
    _, metrics, inputs, _ = result
    val = np.fromfile(inputs["tokenizer"] / "shards" / "validation.bin", dtype=np.uint16)
    train = np.fromfile(inputs["tokenizer"] / "shards" / "train.bin", dtype=np.uint16)
    n = CFG["max_val_tokens"] // CONTEXT
    targets = val[: n * CONTEXT].reshape(n, CONTEXT)[:, 1:].ravel()
    _, tokenizer = _model(inputs, "pretrain")
    counts = np.bincount(train, minlength=len(tokenizer)) + 1.0
    expected = math.exp(-np.log(counts[targets] / counts.sum()).mean())
    assert metrics["unigram_ppl"] == pytest.approx(expected, rel=1e-9)
    assert metrics["val_tokens"] == n * (CONTEXT - 1)


def test_val_ppl_is_exp_mean_nll_computed_directly(result):
    _, metrics, inputs, _ = result
    val = np.fromfile(inputs["tokenizer"] / "shards" / "validation.bin", dtype=np.uint16).astype(np.int64)
    n = CFG["max_val_tokens"] // CONTEXT
    for name, stage in MODELS.items():
        model, _ = _model(inputs, stage)
        nlls = []
        with torch.no_grad():
            for w in range(n):  # one window at a time, no batching
                ids = torch.from_numpy(val[w * CONTEXT : (w + 1) * CONTEXT])[None]
                logp = model(ids).logits[0, :-1].log_softmax(-1)
                nlls += (-logp.gather(1, ids[0, 1:, None])[:, 0]).tolist()
        assert metrics[name]["val_ppl"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)


def test_batch_size_does_not_change_results(result, tmp_path):
    _, metrics, inputs, _ = result
    for batch_size in (1, 50):
        _, other = _run(inputs, tmp_path / f"b{batch_size}", batch_size)
        assert other["unigram_ppl"] == metrics["unigram_ppl"]
        assert other["per_task"] == metrics["per_task"]
        for name in MODELS:
            assert other[name]["task_accuracy"] == metrics[name]["task_accuracy"]
            assert other[name]["preference_accuracy"] == metrics[name]["preference_accuracy"]
            assert other[name]["val_ppl"] == pytest.approx(metrics[name]["val_ppl"], rel=1e-5)
            assert other[name]["decoding"] == metrics[name]["decoding"]  # sampled draws too: fixed batches, seeded


def _manual_logp(model, tokenizer, prompt: list[dict], answer: str) -> float:
    """log p(answer + <|end|> | prompt) summed token by token, from the rendered template, unpadded."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
    assert full_text == prompt_text + answer + "<|end|>"
    p_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert ids[: len(p_ids)] == p_ids and ids[-1] == tokenizer.convert_tokens_to_ids("<|end|>")
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(len(p_ids), len(ids)))


def test_preference_accuracy_matches_manual_logp_comparisons(result):
    _, metrics, inputs, _ = result
    pairs = preference_pairs("heldout", CFG["num_pairs"])
    for name, stage in MODELS.items():
        model, tokenizer = _model(inputs, stage)
        wins = []
        for pair in pairs:
            chosen = _manual_logp(model, tokenizer, pair["prompt"], pair["chosen"])
            rejected = _manual_logp(model, tokenizer, pair["prompt"], pair["rejected"])
            assert abs(chosen - rejected) > 1e-3  # no near-ties: the comparison below is meaningful
            wins.append(chosen > rejected)
            assert m.preference_accuracy(model, tokenizer, [pair], batch_size=1) == float(wins[-1])
        assert metrics[name]["preference_accuracy"] == pytest.approx(sum(wins) / len(wins))
        swapped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
        assert m.preference_accuracy(model, tokenizer, swapped, 4) == pytest.approx(1 - sum(wins) / len(wins))


def test_batched_left_padded_greedy_equals_a_manual_greedy_loop(result):
    _, _, inputs, _ = result
    model, tokenizer = _model(inputs, "sft")
    prompts = [ex["messages"][:-1] for ex in sft_examples("heldout", 5)]
    end_ids = {tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id}
    expected = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt in end_ids:
                    break
                new.append(nxt)
        expected.append(tokenizer.decode(new, skip_special_tokens=False).strip())
    assert len({len(tokenizer.apply_chat_template(p, tokenize=False)) for p in prompts}) > 1  # padding happens
    assert m.generate(model, tokenizer, prompts, 6, batch_size=5) == expected


def test_task_accuracy_is_stripped_exact_match_per_task(monkeypatch):
    examples = sft_examples("heldout", 16)
    replies = [f"  {ex['answer']}\n" if i % 4 else ex["answer"] + "x" for i, ex in enumerate(examples)]
    monkeypatch.setattr(m, "generate", lambda *a, **k: replies)
    acc, per_task, _ = m.task_accuracy(None, None, examples, 4, 8)
    assert acc == 12 / 16
    for task, value in per_task.items():
        hits = [i % 4 != 0 for i, ex in enumerate(examples) if ex["task"] == task]
        assert value == sum(hits) / len(hits)


def test_report_links_existing_plots_and_states_definitions(result):
    _, metrics, _, out = result
    report = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"loss_curves.png", "accuracy.png"} <= set(links)
    for link in links:
        assert (out / link).stat().st_size > 1000 and (out / link).read_bytes()[:4] == b"\x89PNG"
    assert "unigram baseline" in report and "sum log p(chosen | prompt)" in report
    assert "| docs_in | 7 |" in report and "| docs_out | n/a |" in report  # missing keys render as n/a
    assert "| bytes_per_token | 2.0000 |" in report
    for task in metrics["per_task"]["base"]:
        assert f"| {task} |" in report
    assert report.count("  - greedy: ") == 3 and report.count("  - top_p: ") == 3
    assert "| sft | top_p | do_sample=True, top_p=0.9 | 3 |" in report and "pass@2" in report
    assert "| embedded_choice | arc_easy | acc,none | 6 | 0 | " in report
    for name in MODELS:  # every accuracy carries its 95% interval, and the interval holds the value
        lo, hi = metrics[name]["task_accuracy_ci95"]
        assert lo <= metrics[name]["task_accuracy"] <= hi and f"{metrics[name]['task_accuracy']:.3f} [" in report
    assert "| base → sft |" in report and report.count("within noise") + report.count("better") + \
        report.count("worse") >= 4


def test_confidence_intervals_match_hand_values():
    lo, hi = m.wilson_interval(0.5, 100)  # Wilson: centre 0.5, half-width z*sqrt(.25/100 + z^2/40000)/(1 + z^2/100)
    z = m.Z95
    half = z * math.sqrt(0.25 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
    assert m.wilson_interval(0.0, 10)[0] == 0.0 and 0.2 < m.wilson_interval(0.0, 10)[1] < 0.35  # never below 0
    diff, half = m.difference_interval(0.565, 0.570, 200, 200)  # the case: sft vs aligned at n=200
    assert diff == pytest.approx(0.005) and half > 0.09  # far inside the noise


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_html_shows_its_tables_and_images_in_headless_chromium(result, tmp_path):
    *_, out = result
    page = (out / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page and 'src="loss_curves.png"' not in page  # self-contained
    # the browser's own view: how many images decoded (naturalWidth > 0) and tables rendered
    probe = ("<script>addEventListener('load', () => { const images = [...document.images]; "
             "document.body.dataset.probe = JSON.stringify({images: images.length, "
             "decoded: images.filter(i => i.complete && i.naturalWidth > 0).length, "
             "tables: document.querySelectorAll('table').length, cells: document.querySelectorAll('td').length}); "
             "});</script>")
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe + "</body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", (tmp_path / "probe.html").as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    seen = json.loads(html.unescape(re.search(r'data-probe="([^"]+)"', dom).group(1)))
    assert seen["images"] >= 2 and seen["decoded"] == seen["images"]
    assert seen["tables"] >= 5 and seen["cells"] > 30


def test_config_yaml_composes_and_validation_names_the_key():
    from omegaconf import OmegaConf

    yaml = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "eval" / "default.yaml"))
    assert EvalConfig(**yaml) == EvalConfig()
    with pytest.raises(ValueError, match="eval.num_tasks"):
        EvalConfig(num_tasks=0)
    code = "import sys, components.eval.config; sys.exit(bool({'torch', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_the_users_held_out_examples_and_pairs_are_scored_for_every_model(result, tmp_path):
    """From the sft / align artifacts' heldout.jsonl (what those stages held out of sft.sources / align.sources)."""
    from components.eval.sources import assistant_nll

    _, plain, inputs, _ = result
    assert all(plain[name]["sources"] == {} for name in MODELS)  # generated data only: nothing of the user's
    examples = [{"messages": ex["messages"], "where": f"mine.jsonl:{i + 1}", "source": "mine"}
                for i, ex in enumerate(sft_examples("train", 5, seed=7))]
    pairs = [{**p, "where": f"prefs.jsonl:{i + 1}", "source": "prefs"} for i, p in enumerate(preference_pairs("train", 4, seed=7))]
    own = dict(inputs)
    for stage, rows in (("sft", examples), ("align", pairs)):
        own[stage] = tmp_path / stage
        shutil.copytree(inputs[stage], own[stage])
        (own[stage] / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, metrics = _run(own, tmp_path / "out", batch_size=3)
    for name, stage in MODELS.items():
        s = metrics[name]["sources"]
        model, tokenizer = _model(own, stage)
        assert s["sft_loss"] == pytest.approx(assistant_nll(model, tokenizer, examples, 1)[0], rel=1e-5)
        assert s["sft_n"] == 5 and s["preference_n"] == 4 and 0 <= s["preference_accuracy"] <= 1
        assert s["preference_accuracy"] == m.preference_accuracy(model, tokenizer, pairs, 1)
    assert "## Your held-out data" in (tmp_path / "out" / "report.md").read_text()


def test_the_report_lists_the_rl_model_when_it_ran_and_compares_it_with_sft():
    from components.eval import report

    def model(acc):
        return {"val_ppl": 30.0, "task_accuracy": acc, "preference_accuracy": 0.8}

    results = {"base": model(0.1), "sft": model(0.5), "aligned": model(0.52), "rl": model(0.7), "unigram_ppl": 200.0,
               "n": {"tasks": 200, "pairs": 200}, "per_task": {"base": {"add": 0.1}, "sft": {"add": 0.4},
                                                             "aligned": {"add": 0.5}, "rl": {"add": 0.9}}}
    headline, changes, per_task = report._headline(results), report._differences(results), report._per_task(results)
    assert [row.split("|")[1].strip() for row in headline[2:-1]] == ["base", "sft", "aligned", "rl"]
    assert any(row.startswith("| sft → rl | +0.200") and "(better)" in row for row in changes), changes
    assert any(row.startswith("| sft → aligned | +0.020") and "(within noise)" in row for row in changes), changes
    assert per_task[0] == "| task | base | sft | aligned | rl |" and per_task[2] == "| add | 0.10 | 0.40 | 0.50 | 0.90 |"
    del results["rl"], results["per_task"]["rl"]  # rl off: no rl row, no rl column
    assert "rl" not in "".join(report._headline(results) + report._differences(results) + report._per_task(results))
