"""`eval.benchmarks` entries: parsed and checked at config time (no lm_eval import here: configs stay light).

An entry is {name, task, path, num_fewshot, limit, metric, fewshot_path}:
- task: a standard shape by its lm-evaluation-harness name (SHAPES), scored with the harness's
  own task definition reading `path` (a local .jsonl/.json/.parquet/.csv copy, or a glob of shards,
  laid out as the real set is when downloaded); or a path to the user's own lm_eval task yaml
  (which names its own local data; `path` must then be null).
- path: null = the embedded generated set of that shape (lambada, arc_easy, gsm8k only).
- fewshot_path: where few-shot examples come from (null: the scored items themselves, the one
  being scored left out, as the harness samples them).
- max_gen_toks: the generation budget of a generate task (gsm8k), null = the task's own (gsm8k: the
  harness's 256, more than a 64- or 256-token context holds: set it below the model's context).
- metric: the headline metric as lm_eval names it ("acc", "acc_norm", "exact_match,flexible-extract");
  null = the shape's (SHAPES), or a user task's first metric.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import check, check_known_keys, expand_paths


@dataclass(frozen=True)
class Shape:
    harness_yaml: str  # lm_eval's own task definition, relative to lm_eval/tasks/
    layout: str  # the fields of one record, as the real set has them
    metric: str  # headline metric, "name,filter" as in lm_eval's results


SHAPES = {
    "lambada": Shape("lambada/lambada_openai.yaml", "text", "acc,none"),
    "arc_easy": Shape("arc/arc_easy.yaml", "question, choices.{text,label}, answerKey", "acc,none"),
    "arc_challenge": Shape("arc/arc_challenge.yaml", "question, choices.{text,label}, answerKey", "acc,none"),
    "piqa": Shape("piqa/piqa.yaml", "goal, sol1, sol2, label", "acc,none"),
    "hellaswag": Shape("hellaswag/hellaswag.yaml", "activity_label, ctx_a, ctx_b, endings, label", "acc,none"),
    "winogrande": Shape("winogrande/default.yaml", "sentence, option1, option2, answer", "acc,none"),
    "boolq": Shape("super_glue/boolq/default.yaml", "passage, question, label (super_glue's boolq)", "acc,none"),
    "gsm8k": Shape("gsm8k/gsm8k.yaml", "question, answer ending in '#### <number>'", "exact_match,strict-match"),
}
EMBEDDED_MAX_GEN_TOKS = 48  # the embedded arithmetic answers are two short lines
EMBEDDED = {"lambada": "cloze", "arc_easy": "choice", "gsm8k": "generation"}  # task -> generated set (benchmark_data)
ENTRY_KEYS = ("name", "task", "path", "num_fewshot", "limit", "metric", "fewshot_path", "max_gen_toks")
GENERATES = ("gsm8k",)  # the shapes whose harness task generates (output_type generate_until)
HARNESS_MAX_GEN_TOKS = 256  # lm_eval's HFLM default, for a generate task whose yaml names none
FILE_TYPES = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json", ".parquet": "parquet",
              ".csv": "csv"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TASK_LINE = re.compile(r"^task:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)
DEFAULT_BENCHMARKS = [
    {"name": "embedded_cloze", "task": "lambada", "path": None},
    {"name": "embedded_choice", "task": "arc_easy", "path": None},
    {"name": "embedded_arithmetic", "task": "gsm8k", "path": None, "num_fewshot": 3},
]


@dataclass(frozen=True)
class BenchmarkSpec:
    key: str  # where it came from, for messages: eval.benchmarks[1]
    name: str  # the lm_eval task name it runs as, and its key in metrics.json
    task: str  # a SHAPES name, or "yaml" for the user's own task file
    files: tuple[Path, ...] = ()  # the data it scores (() = the embedded set)
    fewshot_files: tuple[Path, ...] = ()
    file_type: str = "json"  # datasets' builder for files: json | parquet | csv
    task_yaml: Path | None = None  # the user's own task file
    harness_task: str | None = None  # the task name inside that yaml
    num_fewshot: int = 0
    limit: int | None = None
    metric: str | None = None
    max_gen_toks: int | None = None

    @property
    def generation_budget(self) -> int | None:
        """Tokens a standard generate task may produce (None: not one, or a user task: its own yaml)."""
        if self.task not in GENERATES:
            return None
        return self.max_gen_toks or (EMBEDDED_MAX_GEN_TOKS if self.embedded else HARNESS_MAX_GEN_TOKS)

    @property
    def generates(self) -> bool:
        """Whether the harness generates for it (output_type generate_until): a standard generate task, or a user
        task whose yaml says so."""
        if self.task_yaml is not None:
            return "generate_until" in Path(self.task_yaml).read_text(encoding="utf-8")
        return self.task in GENERATES

    @property
    def embedded(self) -> str | None:
        return EMBEDDED[self.task] if self.task in EMBEDDED and not self.files else None

    def input_files(self) -> list[Path]:
        """What the scores read: the data, and a user task's yaml with its helper modules beside it."""
        helpers = sorted(self.task_yaml.parent.glob("*.py")) if self.task_yaml else []
        return [*self.files, *self.fewshot_files, *([self.task_yaml] if self.task_yaml else []), *helpers]


def _file_type(paths: list[Path], key: str) -> str:
    types = set()
    for path in paths:
        suffix = next((s for s in sorted(FILE_TYPES, key=len, reverse=True) if path.name.lower().endswith(s)), None)
        check(suffix is not None, key, str(path), f"a data file ends in one of {sorted(FILE_TYPES)}")
        types.add(FILE_TYPES[suffix])
    check(len(types) == 1, key, [str(p) for p in paths], "all files of one benchmark are of one type")
    return types.pop()


def _files(value: Any, key: str) -> tuple[Path, ...]:
    check(isinstance(value, str) and value.strip() != "", key, value, "a path or glob of a local data file")
    try:
        return tuple(p.resolve() for p in expand_paths([value], key))
    except FileNotFoundError as err:
        raise ValueError(f"config error: {key}={value!r}: no such file ({err})") from None


def _user_task(task: str, key: str) -> tuple[Path, str]:
    path = Path(task).expanduser()
    check(path.is_file(), key, task, f"choose a standard task {sorted(SHAPES)} or give an existing lm_eval task yaml")
    found = _TASK_LINE.search(path.read_text())
    check(found is not None, key, task, "the yaml names no `task:` (one task per file; groups are not supported)")
    return path.resolve(), found.group(1)


def parse_benchmark(entry: Any, index: int) -> BenchmarkSpec:
    key = f"eval.benchmarks[{index}]"
    check(isinstance(entry, dict), key, entry, "a mapping {name, task, path, num_fewshot, limit, metric, fewshot_path}")
    check_known_keys(entry, ENTRY_KEYS, key)
    name, task = entry.get("name"), entry.get("task")
    check(isinstance(name, str) and bool(_NAME.match(name)), f"{key}.name", name,
          "a name of letters, digits and _ (it is the lm_eval task name and the metrics.json key)")
    check(isinstance(task, str) and task.strip() != "", f"{key}.task", task, f"one of {sorted(SHAPES)} or a task yaml")
    num_fewshot, limit, metric = entry.get("num_fewshot", 0), entry.get("limit"), entry.get("metric")
    check(isinstance(num_fewshot, int) and num_fewshot >= 0, f"{key}.num_fewshot", num_fewshot, "must be an int >= 0")
    check(limit is None or (isinstance(limit, int) and limit > 0), f"{key}.limit", limit,
          "must be an int > 0 (items scored), or null: all")
    check(metric is None or (isinstance(metric, str) and metric.strip() != ""), f"{key}.metric", metric,
          "an lm_eval metric name such as acc or exact_match,strict-match, or null: the shape's")
    max_gen_toks = entry.get("max_gen_toks")
    check(max_gen_toks is None or (isinstance(max_gen_toks, int) and max_gen_toks > 0 and task in GENERATES),
          f"{key}.max_gen_toks", max_gen_toks, f"an int > 0 for a generate task ({list(GENERATES)}), or null")
    common = dict(key=key, name=name, num_fewshot=num_fewshot, limit=limit, metric=metric, max_gen_toks=max_gen_toks)
    fewshot = entry.get("fewshot_path")
    if task not in SHAPES:
        task_yaml, harness_task = _user_task(task, f"{key}.task")
        for field in ("path", "fewshot_path"):
            check(entry.get(field) is None, f"{key}.{field}", entry.get(field),
                  "must be null for a task yaml of your own: the yaml names its data")
        return BenchmarkSpec(task="yaml", task_yaml=task_yaml, harness_task=harness_task, **common)
    if entry.get("path") is None:
        check(task in EMBEDDED, f"{key}.path", None,
              f"null (the embedded set) exists for {sorted(EMBEDDED)} only: give the path of a local copy of {task} "
              f"with the fields {SHAPES[task].layout}")
        check(fewshot is None, f"{key}.fewshot_path", fewshot, "the embedded set draws its few-shot examples itself")
        return BenchmarkSpec(task=task, **common)
    files = _files(entry["path"], f"{key}.path")
    fewshot_files = _files(fewshot, f"{key}.fewshot_path") if fewshot is not None else ()
    file_type = _file_type([*files, *fewshot_files], f"{key}.path")
    return BenchmarkSpec(task=task, files=files, fewshot_files=fewshot_files, file_type=file_type, **common)


def parse_benchmarks(entries: list[Any]) -> tuple[BenchmarkSpec, ...]:
    check(isinstance(entries, (list, tuple)), "eval.benchmarks", entries, "a list of mappings ([]: none)")
    specs = tuple(parse_benchmark(entry, i) for i, entry in enumerate(entries))
    for i, spec in enumerate(specs):
        check(spec.name not in [s.name for s in specs[:i]], f"{spec.key}.name", spec.name, "names must be unique")
    return specs
