"""sft.sources / align.sources entries: a path or glob, or a mapping of the same form as data.sources
{path, format, name, weight, cap, prompt_key, response_key, system_key, messages_key, chosen_key,
rejected_key}, checked when the config is built; reading a source into located records with
per-source counts; and the seeded, weighted selection across sources. Light: no torch here.

Field keys map a user's own field names onto a format: `messages_key` names a list of turns
(ShareGPT or chat shape), else `prompt_key` / `response_key` (sft) or `prompt_key` / `chosen_key` /
`rejected_key` (align) name strings (a preference prompt may also be a list of turns), and
`system_key` an optional system prompt. With any key given, the record is read by the mapping only.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from components.chat.formats import (FormatError, PREFERENCE_FORMATS, SFT_FORMATS, _answer, _text, _turns,
                                     _with_system, preference_record, records, self_instruct_examples, sft_record)
from components.config import check, check_choice, check_known_keys, expand_paths

SOURCE_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz", ".parquet", ".csv")
COMMON_KEYS = ("path", "format", "name", "weight", "cap", "split", "prompt_key", "system_key", "messages_key")
SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")  # what save_to_disk writes
PREFERENCE_KEYS = COMMON_KEYS + ("chosen_key", "rejected_key")
# the section each stage's sources are read for: sft reads chat examples, the others preference pairs
SPEC_KEYS = {"sft": COMMON_KEYS + ("response_key",), "align": PREFERENCE_KEYS, "reward": PREFERENCE_KEYS}


@dataclass(frozen=True)
class ChatSource:
    key: str  # where it came from in the config, for messages: sft.sources[1]
    name: str  # label of its counts in the manifest
    files: tuple[Path, ...]
    format: str = "auto"
    weight: float | None = None
    cap: int | None = None  # at most this many examples / pairs from this source
    split: str = "train"  # the split of a datasets.save_to_disk DatasetDict
    keys: dict = field(default_factory=dict)  # prompt_key, response_key, ...: the field mapping (empty: a format)


def parse_source(entry: Any, index: int, stage: str, default_format: str) -> ChatSource:
    key = f"{stage}.sources[{index}]"
    if isinstance(entry, str):
        entry = {"path": entry}
    check(isinstance(entry, dict), key, entry, "give a path, a glob or a mapping {path, format, prompt_key, ...}")
    check_known_keys(entry, SPEC_KEYS[stage], key)
    path = entry.get("path")
    check(isinstance(path, str) and path.strip() != "", f"{key}.path", path, "must be a non-empty path or glob")
    files = tuple(expand_paths([path], f"{stage}.sources"))  # a pattern matching nothing fails here
    for file in files:
        saved = file.is_dir() and any((file / f).is_file() for f in SAVED_DATASET_FILES)
        check(saved or file.name.lower().endswith(SOURCE_SUFFIXES), f"{stage}.sources", str(file),
              f"chat and preference files are {' / '.join(SOURCE_SUFFIXES)}, or a datasets.save_to_disk directory")
    split = entry.get("split", "train")
    check(isinstance(split, str) and split != "", f"{key}.split", split, "must be a split name (a save_to_disk DatasetDict's)")
    formats = SFT_FORMATS if stage == "sft" else PREFERENCE_FORMATS
    fmt = entry.get("format", default_format)
    check_choice(f"{key}.format", fmt, ("auto", *formats))
    keys = {k: v for k, v in entry.items() if k.endswith("_key")}
    for k, v in keys.items():
        check(isinstance(v, str) and v != "", f"{key}.{k}", v, "must be a field name (a non-empty string)")
    # unmapped fields keep their usual names (prompt, response, chosen, ...): a record lacking one is
    # quarantined naming it
    check(not keys or fmt == "auto", f"{key}.format", fmt, "field keys replace the format: give one or the other")
    weight, cap = entry.get("weight"), entry.get("cap")
    check(weight is None or (isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0),
          f"{key}.weight", weight, "must be a number > 0 (or omitted)")
    check(cap is None or (isinstance(cap, int) and not isinstance(cap, bool) and cap > 0), f"{key}.cap", cap,
          "must be an integer > 0 (or omitted: no cap)")
    name = entry.get("name", path)
    check(isinstance(name, str) and name != "", f"{key}.name", name, "must be a non-empty string")
    return ChatSource(key=key, name=name, files=files, format=fmt, split=split,
                      weight=None if weight is None else float(weight), cap=cap, keys=keys)


def parse_sources(entries: list[Any], stage: str, default_format: str) -> list[ChatSource]:
    check(isinstance(entries, (list, tuple)), f"{stage}.sources", entries, "must be a list of paths or mappings")
    specs = [parse_source(e, i, stage, default_format) for i, e in enumerate(entries)]
    seen: dict[str, str] = {}
    for spec in specs:
        check(spec.name not in seen, f"{spec.key}.name", spec.name, f"already used by {seen.get(spec.name)}")
        seen[spec.name] = spec.key
    weighted = [s for s in specs if s.weight is not None]
    if weighted and len(weighted) < len(specs):
        check(False, f"{next(s for s in specs if s.weight is None).key}.weight", None,
              "give every source a weight, or none")
    return specs


def source_path(entry: Any) -> str:
    """The path or glob of a sources entry (for the cache key's file fingerprints)."""
    return entry if isinstance(entry, str) else str(entry.get("path", "")) if isinstance(entry, dict) else str(entry)


# --- records -> examples / pairs -----------------------------------------------------------------

def mapped_sft(rec: dict, where: str, keys: dict) -> dict:
    if "messages_key" in keys:
        messages = _turns(rec.get(keys["messages_key"]), where, keys["messages_key"])
    else:
        messages = [{"role": "user", "content": _text(rec, keys.get("prompt_key", "prompt"), where)},
                    {"role": "assistant", "content": _text(rec, keys.get("response_key", "response"), where)}]
    messages = _with_system(rec, messages, where, keys.get("system_key", "system"))
    return sft_record({"messages": messages}, where, "messages")


def mapped_preference(rec: dict, where: str, keys: dict) -> dict:
    prompt_key = keys.get("messages_key", keys.get("prompt_key", "prompt"))
    prompt = rec.get(prompt_key)
    prompt = [{"role": "user", "content": _text(rec, prompt_key, where)}] if not isinstance(prompt, list) \
        else _turns(prompt, where, prompt_key)
    prompt = _with_system(rec, prompt, where, keys.get("system_key", "system"))
    chosen_key, rejected_key = keys.get("chosen_key", "chosen"), keys.get("rejected_key", "rejected")
    return preference_record({"prompt": prompt, "chosen": _answer(rec.get(chosen_key), where, chosen_key),
                              "rejected": _answer(rec.get(rejected_key), where, rejected_key)},
                             where, "prompt_chosen_rejected")


def converter(source: ChatSource, stage: str) -> Callable[[dict, str], list[tuple[dict, str]]]:
    """record, where -> [(example or pair, where)]: a Self-Instruct task gives one per instance."""
    def convert(rec: dict, where: str) -> list[tuple[dict, str]]:
        if stage != "sft":  # align, reward: preference pairs
            pair = mapped_preference(rec, where, source.keys) if source.keys else preference_record(rec, where, source.format)
            return [(pair, where)]
        if source.keys:
            return [(mapped_sft(rec, where, source.keys), where)]
        expanded = self_instruct_examples(rec, where) if source.format == "auto" else None
        return [(sft_record(r, w, "alpaca"), w) for r, w in expanded] if expanded is not None \
            else [(sft_record(rec, where, source.format), where)]
    return convert


def read_source(source: ChatSource, stage: str, strict: bool) -> tuple[list[tuple[dict, str]], list[dict], dict]:
    """([(item, where)], quarantined [{"where", "reason", "rule", "source"}], counts {read, kept,
    quarantined: {rule: n}, files: {path: records read}} for the manifest). strict: the first bad record raises.
    A Self-Instruct task with several instances counts as one record read and several kept."""
    convert, kept, quarantined = converter(source, stage), [], []
    per_file: dict[str, int] = {}
    for path in source.files:
        for rec, where in records(path, source.split):
            per_file[str(path)] = per_file.get(str(path), 0) + 1
            try:
                if isinstance(rec, FormatError):
                    raise rec
                if not isinstance(rec, dict):
                    raise FormatError(f"{where}: a record must be an object")
                kept += convert(rec, where)
            except FormatError as e:
                if strict:
                    raise
                quarantined.append({"where": where, "reason": str(e), "rule": e.rule, "source": source.name})
    counts = {"read": sum(per_file.values()), "kept": len(kept),
              "quarantined": dict(Counter(q["rule"] for q in quarantined)), "files": per_file}
    return kept, quarantined, counts


# --- selection across sources ----------------------------------------------------------------------

def select(pools: list[list[int]], sources: list[ChatSource], total: int, seed: int) -> list[int]:
    """Items to use: each source's pool shuffled (seeded), cut to its cap, then `total` items taken by
    weight (shares of total, no repetition) or, unweighted, a seeded draw from all pools together.
    The result is shuffled, so no source comes first."""
    rng = np.random.default_rng(seed)
    shuffled = [[pool[i] for i in rng.permutation(len(pool))][: s.cap or len(pool)] for pool, s in zip(pools, sources)]
    if all(s.weight is not None for s in sources) and sources:
        weights = np.array([s.weight for s in sources]) / sum(s.weight for s in sources)
        chosen = [item for share, pool in zip(weights, shuffled) for item in pool[: int(round(share * total))]]
    else:
        together = [item for pool in shuffled for item in pool]
        chosen = [together[i] for i in rng.permutation(len(together))[:total]]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def held_out(prompts: list[str], n_val: int) -> set[int]:
    """Indices held out: whole prompts in sha256 order until n_val items, so the split does not move when
    files are reordered or grow, and items sharing a prompt stay on one side."""
    import hashlib

    by_prompt: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_prompt.setdefault(hashlib.sha256(prompt.encode()).hexdigest(), []).append(i)
    held: set[int] = set()
    for h in sorted(by_prompt):
        if len(held) >= n_val:
            break
        held.update(by_prompt[h])
    return held
