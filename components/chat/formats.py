"""Readers for the instruction and preference formats people publish, into one shape each.

SFT records become {"messages": [{"role", "content"}, ...]}; preference records become
{"prompt": [messages...], "chosen": str, "rejected": str}. A record that fits no format, or
has a field of the wrong type, raises FormatError naming the file, the record and the field,
or, with strict=False, is quarantined with that message and counted.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable, Iterator

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
         "system": "system", "bot": "assistant"}


TOOL_ROLES = ("tool", "function", "function_call", "observation", "ipython")


class FormatError(ValueError):
    """A bad record or file; `rule` names the kind (the manifest counts quarantined records by it)."""

    def __init__(self, message: str, rule: str = "format"):
        super().__init__(message)
        self.rule = rule


def check_roles(messages: list[dict], where: str, ends_with: str) -> None:
    """The role orders a chat template renders as one conversation, or FormatError naming the rule.

    An optional system turn first, then user and assistant strictly alternating from a user turn, no
    empty turn, the last turn `ends_with` (assistant: an SFT example; user: a preference prompt).
    Two user turns in a row are refused rather than merged: merging rewrites the data silently.
    """
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in body):
        raise FormatError(f"{where}: a system turn is allowed only first", "role_order")
    for i, m in enumerate(body):
        expected = ("user", "assistant")[i % 2]
        if m["role"] != expected:
            raise FormatError(f"{where}: turn {i + len(messages) - len(body)} is {m['role']}, expected {expected} "
                              f"(roles: {[t['role'] for t in messages]}): turns must alternate from a user turn",
                              "role_order")
        if not m["content"].strip():
            raise FormatError(f"{where}: turn {i + len(messages) - len(body)} ({m['role']}) is empty", "empty_turn")
    if not body or body[-1]["role"] != ends_with:
        raise FormatError(f"{where}: the conversation must end with a {ends_with} turn "
                          f"(roles: {[t['role'] for t in messages]})", "role_order")


def _text(rec: dict, key: str, where: str, optional: bool = False) -> str:
    value = rec.get(key, "" if optional else None)
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise FormatError(f"{where}: field {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def _turns(items: list, where: str, field: str) -> list[dict]:
    """ShareGPT {"from", "value"} or chat {"role", "content"} items -> messages."""
    if not isinstance(items, list):
        raise FormatError(f"{where}: field {field!r} must be a list of turns, got {items!r:.60}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise FormatError(f"{where}: {field}[{i}] must be an object, got {item!r:.60}")
        role, content = item.get("role", item.get("from")), item.get("content", item.get("value"))
        if role in TOOL_ROLES:  # the project's templates have no tool turn: refused with its own rule, counted
            raise FormatError(f"{where}: {field}[{i}] is a {role!r} turn: tool / function calls are not supported "
                              "(the chat template has no such role)", "tool_role")
        if role not in ROLES or not isinstance(content, str):
            raise FormatError(f"{where}: {field}[{i}] needs a known role/from ({sorted(ROLES)}) and a string "
                              f"content/value, got {item!r:.80}")
        out.append({"role": ROLES[role], "content": content})
    return out


def _with_system(rec: dict, messages: list[dict], where: str, system_key: str = "system") -> list[dict]:
    """A record-level system prompt (ShareGPT, LLaMA-Factory, alpaca `system`) as the first turn."""
    system = rec.get(system_key)
    if system is None or (isinstance(system, str) and not system.strip()):
        return messages
    if not isinstance(system, str):
        raise FormatError(f"{where}: field {system_key!r} must be a string, got {system!r:.60}")
    if messages and messages[0]["role"] == "system":
        raise FormatError(f"{where}: a system field and a system turn: give one", "role_order")
    return [{"role": "system", "content": system}, *messages]


def _user_turn(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def _history(rec: dict, where: str) -> list[dict]:
    """LLaMA-Factory / LIMA history: [[user, assistant], ...] before the instruction."""
    out = []
    for i, pair in enumerate(rec.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise FormatError(f"{where}: history[{i}] must be [user, assistant] strings, got {pair!r:.60}")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def _from_alpaca(rec: dict, where: str) -> list[dict]:
    messages = _history(rec, where) + [
        {"role": "user", "content": _user_turn(_text(rec, "instruction", where), _text(rec, "input", where, True))},
        {"role": "assistant", "content": _text(rec, "output", where)}]
    return _with_system(rec, messages, where)


def _from_prompt_response(rec: dict, where: str) -> list[dict]:
    answer_key = "response" if "response" in rec else "completion"
    return [{"role": "user", "content": _text(rec, "prompt", where)},
            {"role": "assistant", "content": _text(rec, answer_key, where)}]


# name -> (fields that identify it, builder); "auto" tries them in this order
SFT_FORMATS: dict[str, tuple[tuple[str, ...], Callable[[dict, str], list[dict]]]] = {
    "messages": (("messages",), lambda rec, where: _turns(rec["messages"], where, "messages")),  # OpenAI / HF chat
    "sharegpt": (("conversations",), lambda rec, where: _with_system(
        rec, _turns(rec["conversations"], where, "conversations"), where)),
    "alpaca": (("instruction", "output"), _from_alpaca),  # alpaca, LIMA-style with history
    "dolly": (("instruction", "response"), lambda rec, where: [
        {"role": "user", "content": _user_turn(_text(rec, "instruction", where), _text(rec, "context", where, True))},
        {"role": "assistant", "content": _text(rec, "response", where)}]),
    "prompt_response": (("prompt", "response|completion"), _from_prompt_response),
    "question_answer": (("question", "answer"), lambda rec, where: [  # GSM8K, many QA sets
        {"role": "user", "content": _text(rec, "question", where)},
        {"role": "assistant", "content": _text(rec, "answer", where)}]),
}


def _has(rec: dict, fields: tuple[str, ...]) -> bool:
    return all(any(alt in rec for alt in f.split("|")) for f in fields)


def sft_record(rec: dict, where: str, fmt: str = "auto") -> dict:
    """One instruction record -> {"messages": [...]}: in the format `fmt`, or the first that fits ("auto")."""
    if fmt == "auto":
        fmt = next((name for name, (fields, _) in SFT_FORMATS.items() if _has(rec, fields)), None)
        if fmt is None:
            raise FormatError(f"{where}: no known instruction format (fields: {sorted(rec)}); expected messages, "
                              "conversations, instruction/input/output, instruction/context/response or prompt/response")
    elif fmt not in SFT_FORMATS:
        raise ValueError(f"unknown instruction format {fmt!r}: choose auto or one of {sorted(SFT_FORMATS)}")
    fields, build = SFT_FORMATS[fmt]
    if not _has(rec, fields):
        raise FormatError(f"{where}: format {fmt} needs field(s) {', '.join(fields)}; the record has {sorted(rec)}")
    messages = build(rec, where)
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise FormatError(f"{where}: no non-empty assistant turn: nothing to train on", "empty_turn")
    check_roles(messages, where, "assistant")
    return {"messages": messages}


def self_instruct_examples(rec: dict, where: str) -> list[tuple[dict, str]] | None:
    """A Self-Instruct task {"instruction", "instances": [{"input", "output"}, ...]} -> one alpaca
    record per instance (with its own "where"); None for any other record."""
    if not (isinstance(rec.get("instances"), list) and "instruction" in rec and "output" not in rec):
        return None
    if not rec["instances"]:
        raise FormatError(f"{where}: field 'instances' is empty")
    out = []
    for i, inst in enumerate(rec["instances"]):
        if not isinstance(inst, dict):
            raise FormatError(f"{where}: instances[{i}] must be an object with input/output, got {inst!r:.60}")
        out.append(({"instruction": rec["instruction"], "input": inst.get("input", ""),
                     "output": inst.get("output")}, f"{where}.instances[{i}]"))
    return out


def _hh_turns(transcript: str, where: str, field: str) -> list[dict]:
    """Anthropic HH-RLHF "\\n\\nHuman: ...\\n\\nAssistant: ..." -> messages."""
    out = []
    for chunk in transcript.split("\n\nHuman: ")[1:]:
        user, sep, assistant = chunk.partition("\n\nAssistant: ")
        out.append({"role": "user", "content": user.strip()})
        if sep:
            out.append({"role": "assistant", "content": assistant.strip()})
    if not out or out[-1]["role"] != "assistant":
        raise FormatError(f"{where}: field {field!r} is not a Human/Assistant transcript ending with the Assistant")
    return out


def _answer(value, where: str, field: str) -> str:
    """A response given as a string, a {"from"/"role", ...} turn, or messages ending with the answer."""
    if isinstance(value, str) and value.strip():
        return value
    turns = _turns([value], where, field) if isinstance(value, dict) else (
        _turns(value, where, field) if isinstance(value, list) and value else None)
    if turns is not None:
        if turns[-1]["role"] != "assistant":  # e.g. a "chosen" given as the user's turn
            raise FormatError(f"{where}: field {field!r} is a {turns[-1]['role']} turn, not an assistant answer",
                              "role_order")
        return turns[-1]["content"]
    raise FormatError(f"{where}: field {field!r} must be a non-empty string, a turn or a message list, got {value!r:.60}")


def _from_stack_exchange(rec: dict, where: str) -> tuple[list[dict], str, str]:
    """StackExchange paired: response_j is preferred over response_k."""
    prompt = [{"role": "user", "content": _text(rec, "question", where)}]
    return prompt, _text(rec, "response_j", where), _text(rec, "response_k", where)


def _from_llamafactory(rec: dict, where: str) -> tuple[list[dict], str, str]:
    """LLaMA-Factory: a ShareGPT prompt, then chosen/rejected turns."""
    prompt = _with_system(rec, _turns(rec["conversations"], where, "conversations"), where)
    return prompt, _answer(rec.get("chosen"), where, "chosen"), _answer(rec.get("rejected"), where, "rejected")


def _from_prompt_chosen_rejected(rec: dict, where: str) -> tuple[list[dict], str, str]:
    """prompt/chosen/rejected, each a string or messages (a multi-turn prompt keeps all its turns)."""
    p = rec["prompt"]
    prompt = [{"role": "user", "content": _text(rec, "prompt", where)}] if isinstance(p, str) else _turns(p, where, "prompt")
    return prompt, _answer(rec.get("chosen"), where, "chosen"), _answer(rec.get("rejected"), where, "rejected")


def _same_prompt(chosen: list[dict], rejected: list[dict], where: str) -> tuple[list[dict], str, str]:
    """Two whole conversations that share every turn but the last: (that prompt, the two last answers)."""
    if chosen[:-1] != rejected[:-1]:
        raise FormatError(f"{where}: chosen and rejected transcripts differ before their last answer")
    for field, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise FormatError(f"{where}: the {field} conversation must end with an assistant turn")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _from_hh_rlhf(rec: dict, where: str) -> tuple[list[dict], str, str]:
    """Anthropic HH-RLHF: two whole transcripts that differ only in the last answer."""
    return _same_prompt(_hh_turns(_text(rec, "chosen", where), where, "chosen"),
                        _hh_turns(_text(rec, "rejected", where), where, "rejected"), where)


def _from_implicit_prompt(rec: dict, where: str) -> tuple[list[dict], str, str]:
    """chosen/rejected as two whole conversations (messages) without a prompt field (TRL's "implicit prompt")."""
    if not isinstance(rec.get("rejected"), list) or not rec["chosen"] or not rec["rejected"]:
        raise FormatError(f"{where}: fields 'chosen' and 'rejected' must both be non-empty message lists")
    return _same_prompt(_turns(rec["chosen"], where, "chosen"), _turns(rec["rejected"], where, "rejected"), where)


# name -> (does the record have this shape, reader -> (prompt, chosen, rejected)); "auto" tries them in order
PREFERENCE_FORMATS: dict[str, tuple[Callable[[dict], bool], Callable[[dict, str], tuple[list[dict], str, str]]]] = {
    "stack_exchange": (lambda rec: "question" in rec and "response_j" in rec, _from_stack_exchange),
    "llamafactory": (lambda rec: "conversations" in rec, _from_llamafactory),
    "prompt_chosen_rejected": (lambda rec: "prompt" in rec, _from_prompt_chosen_rejected),
    "hh_rlhf": (lambda rec: isinstance(rec.get("chosen"), str) and "\n\nHuman: " in rec["chosen"], _from_hh_rlhf),
    "implicit_prompt": (lambda rec: isinstance(rec.get("chosen"), list), _from_implicit_prompt),
}


def preference_record(rec: dict, where: str, fmt: str = "auto") -> dict:
    """One preference record -> {"prompt", "chosen", "rejected"}: in the format `fmt`, or the first that fits ("auto").

    The prompt may hold several turns; chosen and rejected are the final assistant answers.
    """
    if fmt == "auto":
        fmt = next((name for name, (fits, _) in PREFERENCE_FORMATS.items() if fits(rec)), None)
        if fmt is None:
            raise FormatError(f"{where}: no known preference format (fields: {sorted(rec)}); expected prompt/chosen/"
                              "rejected, conversations/chosen/rejected, question/response_j/response_k, HH-RLHF "
                              "transcripts or chosen/rejected message lists")
    elif fmt not in PREFERENCE_FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}: choose auto or one of {sorted(PREFERENCE_FORMATS)}")
    fits, reader = PREFERENCE_FORMATS[fmt]
    if not fits(rec):
        raise FormatError(f"{where}: not a {fmt} record (fields: {sorted(rec)})")
    prompt, chosen, rejected = reader(rec, where)
    if not prompt or prompt[-1]["role"] != "user":
        raise FormatError(f"{where}: the prompt must end with a user turn", "role_order")
    check_roles(prompt, where, "user")
    for field, answer in (("chosen", chosen), ("rejected", rejected)):
        if not answer.strip():
            raise FormatError(f"{where}: the {field} answer is empty", "empty_turn")
    if chosen.strip() == rejected.strip():  # no preference to learn; DPO's loss would be constant
        raise FormatError(f"{where}: chosen and rejected are the same answer", "same_answers")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _table_rows(path: Path) -> Iterator[tuple[dict, str]]:
    """Rows of a .parquet or .csv file as records, "file:row N" (1-based, after a csv header)."""
    if path.name.lower().endswith(".parquet"):
        import pyarrow.parquet as pq  # pyarrow: a dependency of datasets and datatrove
        for i, rec in enumerate(pq.read_table(path).to_pylist()):
            yield rec, f"{path}:row {i + 1}"
        return
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        for i, rec in enumerate(csv.DictReader(f)):
            yield rec, f"{path}:row {i + 1}"


def _json_lines(path: Path) -> Iterator[tuple[dict | FormatError, str]]:
    """Lines decoded one by one, so one bad line (invalid UTF-8 or JSON) is quarantined, not the file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield FormatError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})", "unreadable"), where
                continue
            if line.strip():
                try:
                    yield json.loads(line), where
                except json.JSONDecodeError as e:
                    yield FormatError(f"{where}: invalid JSON ({e.msg})", "invalid_json"), where


def _saved_dataset_rows(path: Path, split: str) -> Iterator[tuple[dict, str]]:
    """Rows of a `datasets.save_to_disk` directory (a Dataset, or `split` of a DatasetDict)."""
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise FormatError(f"{path}: no split {split!r} (splits: {sorted(data)}): set split on the source")
        data = data[split]
    for i, rec in enumerate(data):
        yield rec, f"{path}[{split}][{i}]"


def _records_of(path: Path, split: str) -> Iterator[tuple[dict | FormatError, str]]:
    name = path.name.lower()
    if path.is_dir():
        yield from _saved_dataset_rows(path, split)
    elif name.endswith((".parquet", ".csv")):
        yield from _table_rows(path)
    elif name.endswith((".json", ".json.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise FormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg}): the file is not one JSON list "
                                  "(a .jsonl file holds one record per line)", "invalid_json") from e
        if not isinstance(data, list):
            raise FormatError(f"{path}: a .json file must hold a list of records")
        yield from ((rec, f"{path}[{i}]") for i, rec in enumerate(data))
    else:
        yield from _json_lines(path)


def records(path: Path, split: str = "train") -> Iterator[tuple[dict | FormatError, str]]:
    """(record, "file:line", "file[index]" or "file:row N") from a .json list, .jsonl(.gz), .parquet, .csv or
    a `datasets.save_to_disk` directory (its `split`).

    A file that cannot be read to its end (invalid UTF-8 in a .json list, a truncated .gz, a
    corrupt parquet) yields one FormatError naming the file, after the records read before it.
    """
    path = Path(path)
    try:
        yield from _records_of(path, split)
    except FormatError as e:
        yield e, str(path)
    except (UnicodeDecodeError, EOFError, OSError, ValueError) as e:  # gzip.BadGzipFile is an OSError
        yield FormatError(f"{path}: unreadable ({type(e).__name__}: {e})"[:300], "unreadable"), str(path)


def read_located(path: Path, convert: Callable[[dict, str], dict],
                 strict: bool = True) -> tuple[list[tuple[dict, str]], list[dict]]:
    """([(record, "file:line")], quarantined [{"where", "reason"}]); strict raises on the first bad record instead."""
    out, quarantined = [], []
    for rec, where in records(path):
        try:
            if isinstance(rec, FormatError):
                raise rec
            if not isinstance(rec, dict):
                raise FormatError(f"{where}: a record must be an object")
            out.append((convert(rec, where), where))
        except FormatError as e:
            if strict:
                raise
            quarantined.append({"where": where, "reason": str(e)})
    return out, quarantined


def read(path: Path, convert: Callable[[dict, str], dict], strict: bool = True) -> tuple[list[dict], list[dict]]:
    """(records, quarantined [{"where", "reason"}]); strict raises on the first bad record instead."""
    located, quarantined = read_located(path, convert, strict)
    return [rec for rec, _ in located], quarantined


def read_sft(path: Path, strict: bool = True, fmt: str = "auto") -> tuple[list[dict], list[dict]]:
    return read(path, lambda rec, where: sft_record(rec, where, fmt), strict)


def read_preferences(path: Path, strict: bool = True) -> tuple[list[dict], list[dict]]:
    return read(path, preference_record, strict)
