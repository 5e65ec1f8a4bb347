"""eval.benchmarks: lm-evaluation-harness scores a planted task the model has learned, its figures equal
those of the `lm_eval` command line on the same export, and bad entries fail at config time."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.eval import benchmarks
from components.eval.benchmark_data import GENERATORS
from components.eval.config import EvalConfig
from components.model.build import build_model
from components.model.config import ModelConfig
from tests.tiny import tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(n_layers=1, d_model=64, n_heads=2, n_kv_heads=1, ffn_hidden=128, context_length=128)
FRUITS = "apple lemon orange".split()
THINGS = "river stone cloud garden window candle forest silver bridge pencil rabbit castle ocean mirror".split()


def _planted_rows() -> list[dict]:
    """ARC-layout items: the right answer to "What does <thing> go with?" is a fixed fruit per thing."""
    rows = []
    for i, thing in enumerate(THINGS):
        answer = FRUITS[i % 3]
        options = [answer, *[f for f in FRUITS if f != answer], "tiger"]
        options = options[i % 4:] + options[: i % 4]  # the right one at every position in turn
        rows.append({"id": thing, "question": f"What does {thing} go with?", "answerKey": "ABCD"[options.index(answer)],
                     "choices": {"text": options, "label": list("ABCD")}})
    return rows


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny model trained for a few seconds on the planted items' right answers, in ARC's prompt format."""
    root = tmp_path_factory.mktemp("benchmarks")
    tokenizer = tiny_tokenizer(root / "tok")
    rows = _planted_rows()
    (root / "planted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [f"Question: {r['question']}\nAnswer: {r['choices']['text']['ABCD'.index(r['answerKey'])]}" for r in rows]
    batch = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model = build_model(MODEL, tokenizer, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(50):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.5, loss.item()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def _user_yaml(root: Path) -> Path:
    """The planted task as a user writes an lm_eval task of their own (no include)."""
    path = root / "mine" / "my_task.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        "task: my_planted\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'planted.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: \"{{choices.label.index(answerKey)}}\"\n"
        "doc_to_choice: \"{{choices.text}}\"\nmetric_list:\n  - metric: acc\n")
    return path


def _config(root: Path) -> EvalConfig:
    return EvalConfig(batch_size=8, benchmark_items=6, benchmarks=[
        {"name": "planted", "task": "arc_easy", "path": str(root / "planted.jsonl")},
        {"name": "mine", "task": str(_user_yaml(root))},
        {"name": "embedded_cloze", "task": "lambada", "path": None},
        {"name": "embedded_arithmetic", "task": "gsm8k", "path": None, "num_fewshot": 2},
    ])


@pytest.fixture(scope="module")
def scored(planted):
    cfg = _config(planted)
    out_dir = planted / "eval"
    tasks_dir, scratch = benchmarks.prepare(cfg, out_dir, key="eval")
    assert scratch is None and tasks_dir == out_dir / benchmarks.TASKS_DIR  # a local build: no later rename
    return cfg, tasks_dir, benchmarks.score_model(cfg, tasks_dir, planted / "model", "cpu", chat_template=False)


def test_the_harness_scores_a_planted_task_the_model_learned_well_above_chance(scored):
    _, _, scores = scored
    planted = scores["planted"]
    assert planted["metric"] == "acc,none" and planted["n"] == len(THINGS) and planted["num_fewshot"] == 0
    assert planted["value"] >= 0.9  # chance: 0.25 (4 choices, the right one at each position in turn)
    assert planted["stderr"] is not None and planted["stderr"] < 0.1
    assert set(planted["all"]) == {"acc,none", "acc_norm,none"}  # the harness's arc_easy metrics
    assert scores["mine"]["value"] == planted["value"]  # the user's own yaml: the same prompts, the same score
    assert scores["embedded_cloze"]["n"] == 6 and scores["embedded_arithmetic"]["num_fewshot"] == 2
    assert scores["embedded_arithmetic"]["metric"] == "exact_match,strict-match"
    table = "\n".join(benchmarks.table({"base": {"benchmarks": scores}}, ["base"]))
    assert f"| planted | arc_easy | acc,none | {len(THINGS)} | 0 | {planted['value']:.3f} ± " in table


def test_figures_equal_the_lm_eval_command_line_on_the_export(scored, planted, tmp_path):
    """The reverse path too: `lm_eval --model hf --model_args pretrained=<exported dir>` with the artifact's yamls."""
    cfg, tasks_dir, scores = scored
    names = ["planted", "embedded_cloze", "embedded_arithmetic"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={planted / 'model'},dtype=float32", "--tasks", ",".join(names),
                    "--include_path", str(tasks_dir), "--device", "cpu", "--batch_size", str(cfg.batch_size),
                    "--output_path", str(tmp_path / "out")],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    cli = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    for name in names:
        spec = next(s for s in cfg.benchmark_specs if s.name == name)
        assert benchmarks.summarize(spec, cli, name) == scores[name]


def test_a_prefix_export_is_scored_by_log_likelihood_and_its_generation_tasks_are_recorded_not_scored(scored, planted,
                                                                                                       tmp_path):
    """A base + prefix adapter export: the harness's log-likelihood tasks score the adapted model; its generation
    tasks are left out with the reason (peft's generate would answer as the base), in metrics and the table."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.sft.config import SFTConfig
    from components.train import adapters

    cfg, tasks_dir, plain = scored
    base = AutoModelForCausalLM.from_pretrained(planted / "model")
    model = adapters.add_adapter(base, SFTConfig(adapter="prefix", num_virtual_tokens=4), "sft", 10)
    export = tmp_path / "export"
    model.save_pretrained(export / adapters.ADAPTER_DIR)
    base.save_pretrained(export)
    AutoTokenizer.from_pretrained(planted / "model").save_pretrained(export)
    assert [s.generates for s in cfg.benchmark_specs] == [False, False, False, True]  # gsm8k; the user yaml: choice
    scores = benchmarks.score_model(cfg, tasks_dir, export, "cpu", chat_template=False)
    skipped = scores["embedded_arithmetic"]
    assert skipped["value"] is None and "prefix" in skipped["skipped"] and skipped["n"] == 0
    assert scores["planted"]["value"] is not None and scores["planted"]["n"] == len(THINGS)
    table = "\n".join(benchmarks.table({"base": {"benchmarks": plain}, "sft": {"benchmarks": scores}}, ["base", "sft"]))
    assert "| embedded_arithmetic | gsm8k |" in table and "not scored" in table


@pytest.mark.parametrize("entries", [
    ({"name": "x", "task": "arc_easy", "path": "/no/such/file.jsonl"}, r"eval.benchmarks\[0\].path"),
    ({"name": "x", "task": "piqa", "path": None}, r"eval.benchmarks\[0\].path"),  # no embedded piqa
    ({"name": "x", "task": "mmlu_pro"}, r"eval.benchmarks\[0\].task"),
    ({"name": "x", "task": "gsm8k", "num_fewshot": -1}, r"eval.benchmarks\[0\].num_fewshot"),
    ({"name": "x", "task": "gsm8k", "limit": 0}, r"eval.benchmarks\[0\].limit"),
    ({"name": "x y", "task": "gsm8k"}, r"eval.benchmarks\[0\].name"),
    ({"name": "x", "task": "gsm8k", "shots": 5}, r"eval.benchmarks\[0\].shots"),
    ({"name": "x", "task": "arc_easy", "max_gen_toks": 8}, r"eval.benchmarks\[0\].max_gen_toks"),  # no generation
    ({"name": "x", "task": "lambada"}, {"name": "x", "task": "gsm8k"}, r"eval.benchmarks\[1\].name"),  # twice
])
def test_a_bad_benchmark_entry_fails_at_config_time_naming_it(entries):
    *given, key = entries
    with pytest.raises(ValueError, match=key):
        EvalConfig(benchmarks=given)


def test_a_generation_budget_over_the_models_context_fails_before_scoring(planted):
    cfg = EvalConfig(benchmarks=[{"name": "long", "task": "gsm8k", "path": None, "max_gen_toks": 200}])
    tasks_dir, _ = benchmarks.prepare(cfg, planted / "long", key="long")
    with pytest.raises(ValueError, match=r"eval.benchmarks\[0\].max_gen_toks=200: .* context of 128"):
        benchmarks.score_model(cfg, tasks_dir, planted / "model", "cpu", chat_template=False)


def test_embedded_sets_are_seeded_and_laid_out_as_the_standard_sets():
    assert GENERATORS["choice"](5, 0) == GENERATORS["choice"](5, 0) != GENERATORS["choice"](5, 1)
    cloze, choice, arithmetic = (GENERATORS[k](3, 0)[0] for k in ("cloze", "choice", "generation"))
    assert set(cloze) == {"text"} and cloze["text"].split()[-1] in cloze["text"].rsplit(" ", 1)[0]
    assert set(choice) == {"id", "question", "choices", "answerKey"} and len(choice["choices"]["text"]) == 4
    worked = arithmetic["answer"].split("= ")[-1].split(".")[0]  # "... then 17 - 2 = 15.\n#### 15"
    assert arithmetic["answer"].endswith(f"\n#### {worked}")


# one record of each standard set, laid out as the downloaded set has it, and the answer the harness must read
REAL_RECORDS = {
    "arc_challenge": ({"id": "q", "question": "Which is a fruit?", "answerKey": "B",
                       "choices": {"text": ["stone", "apple", "river"], "label": ["A", "B", "C"]}}, "apple"),
    "piqa": ({"goal": "To open a jar", "sol1": "eat the lid", "sol2": "twist the lid", "label": 1}, "twist the lid"),
    "hellaswag": ({"ind": 1, "activity_label": "Cooking", "ctx_a": "A man cuts onions.", "ctx_b": "he", "ctx": "",
                   "endings": ["flies.", "cries."], "source_id": "x", "split": "val", "split_type": "indomain",
                   "label": "1"}, "cries."),  # its label is a string in the downloaded set
    "winogrande": ({"sentence": "The cup fell off the table because _ was slippery.", "option1": "the cup",
                    "option2": "the table", "answer": "2"}, "was slippery."),  # the harness scores the suffix after each option
    "boolq": ({"question": "is water wet", "passage": "Water is a liquid.", "idx": 0, "label": 1}, "yes"),
    "lambada": ({"text": "the cat sat on the mat"}, " mat"),
    "gsm8k": ({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}, "2 + 3 = 5\n#### 5"),
}


def test_every_standard_shape_reads_the_layout_of_the_downloaded_set(tmp_path):
    """The harness's own task for each shape, reading a local file: the prompt's answer is the record's."""
    from lm_eval.tasks import TaskManager

    entries = []
    for task, (record, _) in REAL_RECORDS.items():
        (tmp_path / f"{task}.jsonl").write_text(json.dumps(record) + "\n")
        entries.append({"name": f"local_{task}", "task": task, "path": str(tmp_path / f"{task}.jsonl")})
    cfg = EvalConfig(benchmarks=entries)
    benchmarks.write_tasks(cfg, tmp_path, tmp_path, tmp_path / "tasks")
    loaded = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False).load(
        [e["name"] for e in entries])["tasks"]
    for task, (_, answer) in REAL_RECORDS.items():
        harness_task = loaded[f"local_{task}"]
        doc = list(harness_task.test_docs())[0]
        target = harness_task.doc_to_target(doc)
        if isinstance(target, int):  # multiple choice: the index of the right choice
            target = harness_task.doc_to_choice(doc)[target]
        assert target.strip() == answer.strip(), task
