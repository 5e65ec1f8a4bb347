"""Where a preference stage's pairs come from (align and reward read the same sources the same way).

A mixin of the stage's config, like adapter_config.py: its fields sit in conf/<stage>/default.yaml beside
the stage's own, and the stage names itself in `section` for its error messages.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from components.chat.formats import PREFERENCE_FORMATS
from components.chat.sources import ChatSource, parse_sources
from components.config import check, check_choice, input_files


@dataclass(frozen=True, kw_only=True)
class PreferenceDataConfig:
    section: ClassVar[str]  # the config section errors name: align, reward
    rejected_choices: ClassVar[tuple[str, ...]] = ("auto", "generated", "dataset")
    # preference files (.json list, .jsonl(.gz), .parquet, .csv; paths or globs; their content is in the cache
    # key) or mappings {path, format, name, weight, cap, prompt_key, chosen_key, rejected_key, system_key,
    # messages_key} (components/chat/sources.py); empty: pairs generated from the tasks (components/tasks)
    sources: list[Any] = input_files()
    format: str = "auto"  # the sources' format, or auto: detected per record (components/chat/formats.py)
    strict: bool = False  # true: the first malformed record fails the run; false: quarantined and counted
    num_pairs: int = 1500  # training pairs: generated, or at most this many from the sources (seeded draw)
    # prompt tokens kept per pair (TRL's max_prompt_length): a longer prompt loses its oldest tokens
    # (the template's first token kept); null: no cap (a pair over the context is left out)
    max_prompt_length: int | None = None
    num_val_pairs: int = 200  # held-out pairs: generated, or taken from the sources by a hash of the prompt
    # auto: generated for generated pairs, dataset with sources | generated: each task's plausible wrong
    # answer | dataset: the sources' own rejected answers (align also takes on_policy: align/config.py)
    rejected: str = "auto"

    def check_preference_data(self) -> None:
        key = self.section
        check_choice(f"{key}.format", self.format, ("auto", *PREFERENCE_FORMATS))
        self.chat_sources  # parsed and checked now (a pattern matching nothing, a bad key): named before planning
        check(self.max_prompt_length is None or self.max_prompt_length > 1, f"{key}.max_prompt_length",
              self.max_prompt_length, "must be > 1, or null: no cap")
        check_choice(f"{key}.rejected", self.rejected, self.rejected_choices)
        generated = " or ".join(c for c in self.rejected_choices if c not in ("auto", "dataset"))
        # a dataset's open-ended answers have no checker, and its judged rejected answers are the signal
        check(not self.sources or self.rejected in ("auto", "dataset"), f"{key}.rejected", self.rejected,
              f"with {key}.sources the sources' own rejected answers are used: set auto or dataset")
        check(bool(self.sources) or self.rejected != "dataset", f"{key}.rejected", self.rejected,
              f"dataset needs {key}.sources; generated pairs take {generated}")
        check(self.format == "auto" or bool(self.sources), f"{key}.format", self.format,
              f"only applies to {key}.sources (empty: generated pairs)")
        check(self.num_pairs > 0, f"{key}.num_pairs", self.num_pairs, "must be > 0")
        check(self.num_val_pairs > 0, f"{key}.num_val_pairs", self.num_val_pairs, "must be > 0")

    @functools.cached_property
    def chat_sources(self) -> tuple[ChatSource, ...]:
        return tuple(parse_sources(self.sources, self.section, self.format))

    @property
    def rejected_from(self) -> str:
        """Where the rejected answers come from, auto resolved."""
        if self.rejected == "auto":
            return "dataset" if self.sources else "generated"
        return self.rejected
