"""Data stage options (mirrored by conf/data/default.yaml). Light: no datatrove import here."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from components.config import check, check_choice, input_path, log_only
from components.data.sources import SourceSpec, expand_files, parse_sources

EXECUTORS = ("local", "slurm", "ray")


@dataclass(frozen=True)
class ResolvedSource:
    spec: SourceSpec
    files: tuple[Path, ...]  # the local files it reads, sorted; () for the embedded corpus and hub ids


def _is_phone_region(region: Any) -> bool:
    import phonenumbers  # metadata only: no datatrove

    return isinstance(region, str) and region.upper() in phonenumbers.SUPPORTED_REGIONS


def _check_rules(rules: Any, section: str, prefix: str = "data.") -> None:
    """Ratios and fractions in [0, 1], counts and lengths > 0; null switches a rule off."""
    for f in fields(rules):
        value = getattr(rules, f.name)
        if value is None or isinstance(value, bool):
            continue
        key = f"{prefix}{section}.{f.name}"
        if isinstance(value, dict):  # {n: fraction} for n-gram rules
            for n, frac in value.items():
                check(int(n) > 0 and 0 <= frac <= 1, key, value, "map n-gram sizes > 0 to fractions in [0, 1]")
        elif any(part in f.name for part in ("ratio", "frac", "thr")):
            check(0 <= value <= 1, key, value, "must be in [0, 1], or null to switch the rule off")
        else:
            check(value > 0, key, value, "must be > 0, or null to switch the rule off")


# The quality blocks' rules under datatrove's own parameter names (its docs apply as they are);
# the defaults are datatrove's, except where a comment says otherwise.
@dataclass(frozen=True, kw_only=True)
class GopherQualityRules:
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: int | None = 3
    max_avg_word_length: int | None = 10
    max_symbol_word_ratio: float | None = 0.1  # '#' and '...' per word
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8  # despite the name: at least this share of words must hold a letter
    min_stop_words: int | None = 2


@dataclass(frozen=True, kw_only=True)
class GopherRepetitionRules:
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})  # n: max share of the top n-gram
    dup_n_grams: dict[int, float] = field(default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.1})  # n: max share in duplicated n-grams


@dataclass(frozen=True, kw_only=True)
class C4Rules:
    split_paragraph: bool = True  # lines are split on newlines (false: on sentences)
    remove_citations: bool = True  # strip wikipedia-style [1] citations
    filter_no_terminal_punct: bool = False  # datatrove: true; false keeps lines without end punctuation (lists, headings in docs)
    min_num_sentences: int = 5  # documents with fewer sentences are dropped
    min_words_per_line: int = 3  # shorter lines are removed
    max_word_length: int = 1000  # documents with a longer word are dropped
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True  # lines mentioning javascript are removed
    filter_curly_bracket: bool = True  # documents with '{' are dropped (code; also technical prose that shows a dict)
    filter_policy: bool = True  # lines about cookies, terms of use, privacy policy are removed


@dataclass(frozen=True, kw_only=True)
class FineWebRules:
    line_punct_thr: float = 0.12  # drop when fewer lines end in terminal punctuation
    line_punct_exclude_zero: bool = False  # keep documents with no such line at all
    short_line_thr: float = 0.67  # drop when more lines are short ...
    short_line_length: int = 30  # ... i.e. at most this many characters
    char_duplicates_ratio: float = 0.01  # drop when more characters sit in duplicated lines
    new_line_ratio: float = 0.3  # drop when newlines per word exceed this (lists, menus)


@dataclass(frozen=True, kw_only=True)
class SlurmConfig:
    """datatrove's SlurmPipelineExecutor: one sbatch job array per pass (data.executor=slurm)."""
    partition: str = "cpu"  # slurm partition the jobs go to
    time: str = "04:00:00"  # time limit per job (HH:MM:SS)
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    qos: str = "normal"
    venv_path: str | None = None  # python venv activated in each job (null: the submitting environment)
    sbatch_args: dict[str, str] = field(default_factory=dict)  # extra sbatch options, e.g. {account: my_account}
    poll_seconds: int = 30  # how often the stage checks that a pass finished before starting the next


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """datatrove's RayPipelineExecutor (data.executor=ray): one Ray actor per datatrove job."""
    address: str | None = None  # ray.init(address): "auto" joins the running cluster, null starts a local one
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0  # Ray memory reserved per CPU of a task: a task waits until the cluster has it
    tasks_per_job: int = 1  # datatrove tasks run by each Ray job


# Blocks a source can switch off or tune (data.sources[i].blocks): block -> the DataConfig section with
# its rules, "own" (settings named in DataConfig.block_rules) or None (on/off only). Dedup and PII act on the whole corpus.
PER_SOURCE_BLOCKS: dict[str, Any] = {
    "url_blocklist": None, "language": "own", "toxicity": "own",
    "gopher_quality": "gopher_quality_rules", "gopher_repetition": "gopher_repetition_rules", "c4": "c4_rules",
    "c4_badwords": None, "fineweb": "fineweb_rules"}
FILE_BLOCKS = {"url_blocklist": "url_blocklist", "c4_badwords": "c4_badwords_file"}  # block -> the file it needs


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    sources: list[Any] = field(default_factory=lambda: ["embedded"])  # paths, globs, "embedded" or {type, path, weight, ...}: see components/data/sources.py
    text_key: str = "text"  # field holding the text in jsonl / parquet / hf sources (a source's own text_key wins)
    strict: bool = False  # a malformed input line is an error naming file, line and field, instead of quarantined
    mix_by: str = "documents"  # what source weights apportion: documents or bytes (of text)
    mix_total: int | None = None  # size of a weighted mix in mix_by units (null: the largest mix needing no repetition)
    mix_repeat: bool = False  # let a source repeat documents to fill its share of mix_total
    max_documents: int | None = None  # cap on embedded prose documents (null: all)
    seed: int = 0  # planting of the embedded corpus's contamination, and the weighted mix's sampling
    validation_fraction: float = 0.08  # share of documents held out, chosen by a hash of the id
    gopher_quality: bool = True  # Gopher quality filter (length, word shapes, stop words, symbols)
    gopher_quality_rules: GopherQualityRules = field(default_factory=GopherQualityRules)
    gopher_alpha_words: str = "whitespace"  # words of the "80% hold a letter" rule: whitespace (Gopher paper) | tokens (datatrove: punctuation counts)
    gopher_repetition: bool = True  # Gopher repetition filter (duplicate lines, paragraphs, n-grams)
    gopher_repetition_rules: GopherRepetitionRules = field(default_factory=GopherRepetitionRules)
    c4: bool = True  # C4 line and document rules (bad words: data.c4_badwords_file)
    c4_rules: C4Rules = field(default_factory=C4Rules)
    # C4's bad-words rule (datatrove's C4BadWordsFilter) on a local list, one word or phrase a line: a document
    # holding one (word-boundary match, any case) is dropped, reason c4_badwords; null: off (datatrove's lists are a download)
    c4_badwords_file: str | None = input_path()
    exact_dedup: bool = True  # drop documents whose normalised text was seen before
    minhash: bool = True  # MinHash near-dedup, one document kept per cluster
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8
    pii: bool = True  # replace emails, IPs, phones, cards, SSNs, IBANs, secrets with <EMAIL>, <IP>, ...
    pii_keep_private_ips: bool = False  # leave 10/8, 192.168/16, 127/8, fc00::/7 ... untouched
    pii_phone_regions: list[str] = field(default_factory=lambda: ["US", "GB", "DE", "FR", "AU", "IN"])  # national phone formats read (+ numbers: all)
    pii_phone_leniency: str = "valid"  # phonenumbers' Leniency: possible | valid | strict_grouping | exact_grouping
    max_line_bytes: int = 1_000_000  # longer input lines (and longer texts, extracted web texts) are quarantined
    max_html_bytes: int = 8 << 20  # longer raw HTML pages (html files, WARC responses) are quarantined
    tasks: int = 2  # datatrove tasks for the quality filters (sets the output sharding)
    workers: int = log_only(2)  # processes running those tasks (output does not depend on it)
    # --- quality blocks after Gopher and C4, the MinHash guard, executors (order of the pipeline) ---
    fineweb: bool = True  # FineWeb heuristics (datatrove's FineWebQualityFilter)
    fineweb_rules: FineWebRules = field(default_factory=FineWebRules)
    url_blocklist: str | None = input_path()  # file of blocked domains/urls, one a line (# comments); needs metadata.url
    language: bool = True  # language id: py3langid's bundled model (offline), or fastText with data.language_model
    language_model: str | None = input_path()  # local fastText language-id model (e.g. lid.176.bin); null: py3langid's
    languages: list[str] = field(default_factory=lambda: ["en"])  # languages kept by the language filter
    language_threshold: float = 0.65  # minimum score of one kept language
    language_min_words: int = 10  # shorter documents are kept unjudged (py3langid is unreliable on them)
    toxicity: bool = True  # offensive-language filter (alt-profanity-check's bundled model, English), per line
    toxicity_threshold: float = 0.8  # a line scoring at least this probability is offensive
    toxicity_max_fraction: float = 0.25  # documents with a larger share of their words in offensive lines are dropped
    minhash_guard_jaccard: float = 0.6  # a cluster member under this true Jaccard to every kept member is kept
    executor: str = log_only("local")  # local | slurm | ray: datatrove executor running every pass
    slurm: SlurmConfig = log_only(default_factory=SlurmConfig)
    ray: RayConfig = log_only(default_factory=RayConfig)

    def __post_init__(self) -> None:
        weighted = self.specs[0].weight is not None
        check_choice("data.mix_by", self.mix_by, ("documents", "bytes"))
        check_choice("data.gopher_alpha_words", self.gopher_alpha_words, ("whitespace", "tokens"))
        check_choice("data.pii_phone_leniency", self.pii_phone_leniency, ("possible", "valid", "strict_grouping", "exact_grouping"))
        check(all(_is_phone_region(r) for r in self.pii_phone_regions), "data.pii_phone_regions", self.pii_phone_regions,
              "two-letter region codes phonenumbers knows, e.g. [US, GB, DE]")
        check(self.mix_total is None or (weighted and self.mix_total > 0), "data.mix_total", self.mix_total,
              "must be null, or > 0 with weighted sources")
        check(not self.mix_repeat or self.mix_total is not None, "data.mix_repeat", self.mix_repeat,
              "repetition only fills a data.mix_total; set one, or data.mix_repeat=false")
        check(not (self.mix_repeat and (self.exact_dedup or self.minhash)), "data.mix_repeat", self.mix_repeat,
              "repeated documents would be removed again by data.exact_dedup / data.minhash; turn those off or repetition off")
        check(0 < self.validation_fraction < 0.5, "data.validation_fraction", self.validation_fraction,
              "must be in (0, 0.5)")
        check(self.max_documents is None or self.max_documents >= 10, "data.max_documents", self.max_documents,
              "must be null or >= 10")
        for name in ("minhash_ngrams", "minhash_buckets", "minhash_hashes_per_bucket", "tasks", "workers", "max_line_bytes",
                     "max_html_bytes", "language_min_words"):
            check(getattr(self, name) > 0, f"data.{name}", getattr(self, name), "must be > 0")
        for name in ("language_threshold", "minhash_guard_jaccard", "toxicity_threshold", "toxicity_max_fraction"):
            check(0 <= getattr(self, name) <= 1, f"data.{name}", getattr(self, name), "must be in [0, 1]")
        for name in ("gopher_quality_rules", "gopher_repetition_rules", "c4_rules", "fineweb_rules"):
            _check_rules(getattr(self, name), name)
        for name in ("url_blocklist", "language_model", "c4_badwords_file"):  # user files: missing ones fail here, not mid-run
            path = getattr(self, name)
            check(path is None or Path(path).expanduser().is_file(), f"data.{name}", path,
                  "no such file: give an existing local path, or null to switch the block off")
        check(len(self.languages) > 0, "data.languages", self.languages, "name at least one language code, e.g. [en]")
        check_choice("data.executor", self.executor, EXECUTORS)
        for spec in self.specs:
            for block, value in spec.blocks.items():
                self.check_source_block(spec, block, value)
        check(self.slurm.poll_seconds > 0, "data.slurm.poll_seconds", self.slurm.poll_seconds, "must be > 0")

    def block_rules(self, block: str, overrides: dict | None = None) -> dict:
        """A per-source block's settings: the global ones with a source's overrides on top."""
        rules = PER_SOURCE_BLOCKS[block]
        if rules not in (None, "own"):
            return {**asdict(getattr(self, rules)), **(overrides or {})}
        own = {"language": {"languages": list(self.languages), "threshold": self.language_threshold,
                            "min_words": self.language_min_words},
               "toxicity": {"threshold": self.toxicity_threshold, "max_fraction": self.toxicity_max_fraction}}
        return {**own.get(block, {}), **(overrides or {})}

    def check_source_block(self, spec: SourceSpec, block: str, value) -> None:
        """A source's `blocks.<block>` names a per-source block and only its rules, with valid values."""
        key = f"{spec.key}.blocks.{block}"
        check(block in PER_SOURCE_BLOCKS, key, value,
              f"no such block for source {spec.name!r}: per-source blocks are {list(PER_SOURCE_BLOCKS)}")
        check(block not in FILE_BLOCKS or value is False or getattr(self, FILE_BLOCKS[block]) is not None, key, value,
              f"source {spec.name!r} turns the {'URL blocklist' if block == 'url_blocklist' else block + ' block'} on, "
              f"but data.{FILE_BLOCKS.get(block)} names no file")
        if not isinstance(value, dict):
            return
        known = list(self.block_rules(block))
        for rule in value:
            check(rule in known, f"{key}.{rule}", value[rule], f"no such rule of {block} (source {spec.name!r}): "
                  f"its rules are {known}" if known else f"{block} has no rules to set per source, only true/false")
        rules = PER_SOURCE_BLOCKS[block]
        if rules not in (None, "own"):
            _check_rules(replace(getattr(self, rules), **value), key, prefix="")
        for rule in ("threshold", "max_fraction"):
            if rule in value:
                check(isinstance(value[rule], (int, float)) and 0 <= value[rule] <= 1, f"{key}.{rule}", value[rule],
                      "must be in [0, 1]")
        check(not isinstance(value.get("min_words", 1), bool) and isinstance(value.get("min_words", 1), int)
              and value.get("min_words", 1) > 0, f"{key}.min_words", value.get("min_words"), "must be an integer > 0")
        if "languages" in value:
            check(isinstance(value["languages"], list) and len(value["languages"]) > 0, f"{key}.languages",
                  value["languages"], "name at least one language code, e.g. [en]")

    # Derived once per config object and kept with it (a frozen config never changes, and a pickled
    # one carries them): the plan's key and the data stage's run see the very same files.
    @functools.cached_property
    def specs(self) -> tuple[SourceSpec, ...]:
        """data.sources parsed and checked (at construction, by __post_init__)."""
        return tuple(parse_sources(self.sources))

    @functools.cached_property
    def resolved_sources(self) -> tuple[ResolvedSource, ...]:
        """Each source with the local files it reads, globbed once: first by the plan (the cache key
        hashes these files), then read by the data stage. A pattern matching nothing fails here."""
        return tuple(ResolvedSource(spec=spec, files=tuple(expand_files(spec))) for spec in self.specs)

    def source_specs(self) -> list[SourceSpec]:
        return list(self.specs)

    def source_files(self) -> list[Path]:
        """Every local file the sources read: their content is part of the cache key."""
        return [path for source in self.resolved_sources for path in source.files]
