"""Quality blocks that wrap datatrove filters: offline on user-provided files, or faster.

URL blocklist: datatrove's URLFilter with only the user's list (its bundled adult-content
lists stay off) and tldextract's bundled public-suffix snapshot (no fetch).
Language id: py3langid's model bundled in its wheel (on by default), or datatrove's LanguageFilter
with a local fastText model instead of its download of lid.176.bin.
Toxicity: alt-profanity-check's model bundled in its wheel, scored per line (on by default).
C4 bad words: datatrove's C4BadWordsFilter fed the user's local list instead of its download.
Per-source settings: PerSourceBlock hands each document to the filter its source configured.
Gopher quality: datatrove's filter with the Gopher paper's words for the alpha rule.
Gopher repetition, C4, FineWeb: datatrove's filters with the same decisions and reasons, computed
with less work (what changed is said in each class; tests/test_data_blocks.py compares them with
datatrove's on the embedded corpus and on edge cases).
"""
from __future__ import annotations

from collections import Counter
from itertools import accumulate
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter, LanguageFilter, URLFilter)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.c4_filters import (CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS,
                                                   C4BadWordsFilter)
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.utils.text import split_into_sentences, split_into_words
from datatrove.utils.lid import FastTextLID

from components.data.words import DATATROVE_SPECIAL


def read_blocklist(path: str | Path) -> tuple[list[str], list[str]]:
    """(domains, urls) from a file with one entry a line; '#' starts a comment line.
    Entries with a scheme or a path are urls, the rest domains (a domain also blocks its subdomains'
    registered domain: `example.com` blocks `www.example.com`)."""
    domains, urls = [], []
    for line in Path(path).expanduser().read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "/" in entry:  # a scheme or a path: a url, matched exactly
            urls.append(entry)
        else:
            domains.append(entry.lower())
    return domains, urls


def read_badwords(path: str | Path) -> list[str]:
    """Words and phrases, one a line (blank lines skipped), lower-cased: datatrove matches on lower-cased text."""
    lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    return sorted({line.strip().lower() for line in lines if line.strip()})


class LocalC4BadWords(C4BadWordsFilter):
    """datatrove's C4 bad-words rule with the user's list (one word or phrase a line) for every language,
    instead of the per-language lists it downloads: a document is dropped (reason `c4_badwords`) when an entry
    occurs in its lower-cased text flanked by non-word characters, the regex datatrove builds for languages
    that separate words. The list is the user's as given: datatrove's allowlist of its own lists is not applied."""

    name = "c4_badwords"

    def __init__(self, badwords_file: str | Path, exclusion_writer=None):
        import re

        super().__init__(keep_fraction=0.0, fail_on_missing_language=False, exclusion_writer=exclusion_writer)
        words = read_badwords(badwords_file)
        if not words:
            raise ValueError(f"data.c4_badwords_file: {badwords_file} lists no word (one word or phrase a line)")
        self.regex = re.compile(r"(?:\W|^)({})(?:\W|$)".format("|".join(re.escape(w) for w in words)))

    def _get_badwords(self, lang: str):
        return self.regex  # one list for every language (datatrove's own would download one per language)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        keep = super().filter(doc)
        return keep if keep is True else (False, "c4_badwords")


class URLBlocklistFilter(URLFilter):
    """Drops documents whose metadata url is on the user's list (reasons: domain, subdomain, url).
    Documents without a url are kept and counted as `no_url`, and per source as `no_url_in:<source>`
    (warned once per source and task here, and by the stage after the pass): the list cannot judge them."""

    name = "url_blocklist"

    def __init__(self, blocklist: str | Path, exclusion_writer=None):
        from tldextract import TLDExtract

        domains, urls = read_blocklist(blocklist)
        super().__init__(extra_domains=domains, extra_urls=urls, use_integrated_lists=False,
                         exclusion_writer=exclusion_writer)
        self.tldextractor = TLDExtract(suffix_list_urls=())  # bundled suffix list: never goes online
        self.sources_without_url: set[str] = set()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.metadata.get("url"):
            source = str(doc.metadata.get("source"))
            self.stat_update("no_url", f"no_url_in:{source}")
            if source not in self.sources_without_url:
                from loguru import logger

                self.sources_without_url.add(source)
                logger.warning(f"data.url_blocklist: source {source!r} has documents without a url (kept, unjudged); "
                               "a jsonl/parquet/hf source names its url field with metadata_keys: {url: <field>}")
            return True
        keep = super().filter(doc)
        return keep if keep is True else (False, f"blocklisted_{keep[1]}")


class LocalFastTextLID(FastTextLID):
    """datatrove's fastText language id, loading the model from a local file."""

    def __init__(self, model_path: str | Path, languages: list[str]):
        super().__init__(languages)
        self.model_path = str(Path(model_path).expanduser())

    @property
    def model(self):
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(self.model_path)
        return self._model


class LocalLanguageFilter(LanguageFilter):
    """Keeps documents with a score above the threshold for one of `languages`; the reason names
    the language found instead (`language_fr`)."""

    name = "language"

    def __init__(self, model_path: str | Path, languages: list[str], threshold: float, exclusion_writer=None):
        super().__init__(languages=list(languages), language_threshold=threshold, exclusion_writer=exclusion_writer)
        self.model = LocalFastTextLID(model_path, list(languages))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return True if super().filter(doc) else (False, f"language_{doc.metadata['language']}")


class C4Filter(C4QualityFilter):
    """datatrove's C4QualityFilter with the same decisions, reasons, line counters and output text
    (its loop, copied), except that a line's sentences are counted (spaCy's sentencizer, run on every
    kept line: most of the block's time) only while the document has fewer than `min_num_sentences`:
    the count only grows, so once it reaches the minimum the rest cannot change the verdict."""

    name = "c4"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lines = doc.text.splitlines() if self.split_paragraph else split_into_sentences(doc.text, self.language)
        num_sentences = 0
        kept_lines = []
        for line in lines:
            line = line.strip()
            words = line.split()
            self.stat_update("line-total")
            if self.max_word_length != -1 and any(len(word) > self.max_word_length for word in words):
                self.stat_update("line-filter-too_long_word")
                continue
            if self.remove_citations:
                line = CITATION_REGEX.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                self.stat_update("line-filter-no_terminal_punc")
                continue
            if len(words) < self.min_words_per_line:
                self.stat_update("line-filter-too_few_words")
                continue
            line_l = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in line_l:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in line_l:
                self.stat_update("line-filter-javascript")
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and any(p in line_l for p in POLICY_SUBSTRINGS):
                self.stat_update("line-filter-policy")
                continue
            if self.min_num_sentences != -1 and num_sentences < self.min_num_sentences:  # the one change
                num_sentences += len(split_into_sentences(line, self.language)) if self.split_paragraph else 1
            kept_lines.append(line)
            self.stat_update("line-kept")
        if num_sentences < self.min_num_sentences:
            return False, "too_few_sentences"
        doc.text = ("\n" if self.split_paragraph else " ").join(kept_lines).strip()
        return True


def top_n_gram_chars(spaced: str, starts: list[int], n: int) -> int | None:
    """datatrove's find_top_duplicate(get_n_grams(words, n)): characters of the most frequent n-gram
    (words joined by spaces) times its count, None without n-grams. The n-grams are slices of the
    words joined once, not joins of list slices; Counter ties resolve the same (first seen)."""
    grams = [spaced[starts[i]:starts[i + n] - 1] for i in range(len(starts) - n)]
    if not grams:
        return None
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def duplicated_n_gram_chars(joined: str, starts: list[int], n: int) -> int:
    """datatrove's find_all_duplicate(words, n): characters in n-grams (words concatenated without a
    separator, as datatrove does) seen before, skipping past each repeat. When no n-gram repeats (most
    prose), the scan finds none either, so one set answers."""
    last = len(starts) - n  # starts has one entry per word plus the end
    grams = [joined[starts[i]:starts[i + n]] for i in range(max(0, last))]
    if len(set(grams)) == len(grams):
        return 0
    unique: set[str] = set()
    repeated = idx = 0
    while idx < last:
        gram = grams[idx]
        if gram in unique:
            repeated += len(gram)
            idx += n
        else:
            unique.add(gram)
            idx += 1
    return repeated


ALPHA_WORDS = ("whitespace", "tokens")


class GopherQuality(GopherQualityFilter):
    """datatrove's GopherQualityFilter, except that "80% of words contain a letter" counts the Gopher
    paper's words (whitespace-separated) when `alpha_words="whitespace"`. datatrove's spaCy tokens
    make every comma, bracket and full stop a word without a letter, so ordinary prose fails
    (`Hello, world.` is 2 words here, 4 tokens there); real C4 prose dropped 9.6% by it. The other
    rules keep datatrove's tokens and checks (shared with Gopher repetition's split); the alpha rule is
    checked after them, with datatrove's reason (a document failing it and the stop-word rule is
    reported by the stop-word rule). `alpha_words="tokens"`: datatrove's rule as shipped."""

    name = "gopher_quality"

    def __init__(self, *args, alpha_words: str = "whitespace", **kwargs):
        assert alpha_words in ALPHA_WORDS, alpha_words
        super().__init__(*args, **kwargs)
        self.min_alpha_words_ratio = self.max_non_alpha_words_ratio  # datatrove's name says the opposite
        if alpha_words == "whitespace":
            self.max_non_alpha_words_ratio = None  # datatrove's token rule off: ours below replaces it

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        verdict = super().filter(doc)
        if verdict is not True or self.max_non_alpha_words_ratio is not None or not self.min_alpha_words_ratio:
            return verdict
        words = doc.text.split()
        if sum(any(c.isalpha() for c in w) for w in words) / max(1, len(words)) < self.min_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"
        return True


class GopherRepetition(GopherRepetitionFilter):
    """datatrove's GopherRepetitionFilter (its checks in its order, copied), with the n-gram counts
    taken as slices of the words joined once: the same numbers in about 60% of the time."""

    name = "gopher_repetition"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        paragraphs = self.paragraph_exp.split(text.strip())
        paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
        if self.dup_para_frac and paragraphs_duplicates / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and char_duplicates / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = self._line_splitter.split(text)
        line_duplicates, char_duplicates = find_duplicates(lines)
        if self.dup_line_frac and line_duplicates / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and char_duplicates / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"

        words = split_into_words(text, self.language)
        if self.top_n_grams:
            spaced, starts = " ".join(words), [0, *accumulate(len(w) + 1 for w in words)]
            for n, n_frac in self.top_n_grams:
                top_char_length = top_n_gram_chars(spaced, starts, n)
                if top_char_length is not None and top_char_length / len(text) > n_frac:
                    return False, f"top_{n}_gram"
        if self.dup_n_grams:
            joined, starts = "".join(words), [0, *accumulate(len(w) for w in words)]
            for n, n_frac in self.dup_n_grams:
                if duplicated_n_gram_chars(joined, starts, n) / len(text) > n_frac:
                    return False, f"duplicated_{n}_n_grams"
        return True


class FineWebQuality(FineWebQualityFilter):
    """datatrove's FineWebQualityFilter (copied), except that the list rule (newlines per word) splits
    words with spaCy only when whitespace cannot decide: spaCy's tokens split whitespace-separated
    chunks further and never merge them, so `text.split()` is a lower bound on the word count, and a
    ratio under the threshold with it is under the threshold with spaCy's count too. (Not for text with
    `IS_ALPHA`, which the tokenizer deletes: see components/data/words.py.)"""

    name = "fineweb"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lines = doc.text.split("\n")
        lines = [line for line in lines if line.strip() != ""]
        if len(lines) == 0:
            return False, "empty"
        ratio = sum(1 for line in lines if line.endswith(self.stop_chars)) / len(lines)
        if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
            return False, "line_punct_ratio"
        ratio = sum(1 for line in lines if len(line) <= self.short_line_length) / len(lines)
        if ratio > self.short_line_threshold:
            return False, "short_line_ratio"
        ratio = find_duplicates(lines)[1] / len(doc.text.replace("\n", ""))
        if ratio > self.char_duplicates_ratio:
            return False, "char_dup_ratio"
        new_line = doc.text.count("\n")
        at_least = len(doc.text.split())  # >= 1: there is a non-blank line
        if new_line / at_least <= self.new_line_ratio and DATATROVE_SPECIAL not in doc.text:
            return True
        words = split_into_words(doc.text, self.language)
        if new_line / len(words) > self.new_line_ratio:
            return False, "list_ratio"
        return True


_LANGID = None  # py3langid's identifier, loaded once per process (about 1 s): every task's copy shares it


def bundled_identifier():
    """py3langid's model, shipped inside its wheel (97 languages, 4.5 MB): language id with no download."""
    global _LANGID
    if _LANGID is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _LANGID = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _LANGID


class BundledLanguageFilter(BaseFilter):
    """Language id with py3langid's bundled model (on by default: it needs no file). Keeps a document
    whose probability for one of `languages` is at least the threshold; the reason names the language
    found instead (`language_fr`), as LocalLanguageFilter's. Scores the first `max_chars` characters:
    a book's first pages decide its language as well as the whole book, at a fraction of the time.
    Documents of fewer than `min_words` words are kept unjudged (counted as `too_short_to_judge`):
    measured on real English answers, under 10 words half score below 0.65 ("DNA stands for
    deoxyribonucleic acid." 0.19), from 10 words on nearly all pass and other languages are found."""

    name = "language"

    def __init__(self, languages: list[str], threshold: float, min_words: int = 10, exclusion_writer=None,
                 max_chars: int = 20_000):
        super().__init__(exclusion_writer)
        self.languages, self.threshold, self.min_words, self.max_chars = tuple(languages), threshold, min_words, max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if len(doc.text.split(None, self.min_words)) < self.min_words:
            self.stat_update("too_short_to_judge")
            return True
        scores = bundled_identifier().rank(doc.text[:self.max_chars])  # [(language, probability)], best first
        best, best_score = scores[0]
        doc.metadata["language"], doc.metadata["language_score"] = best, round(float(best_score), 4)
        kept = dict(scores)
        if any(kept.get(language, 0.0) >= self.threshold for language in self.languages):
            return True
        return False, f"language_{best}"


class ToxicityFilter(BaseFilter):
    """Offensive-language filter with alt-profanity-check's model, shipped inside its wheel (a linear
    model on word n-grams trained on offensive comments; English). Each non-blank line is scored; a
    document is dropped (reason `toxic`) when more than `max_fraction` of its words sit in lines scoring
    at least `threshold`. Lines, not the whole document: one insult in a long article does not drop it,
    a thread of insults under neutral post headers does. Documents are scored `batch_size` at a time:
    the model costs ~12 ms a call whatever the number of lines, ~0.1 ms a line."""

    name = "toxicity"

    def __init__(self, threshold: float, max_fraction: float, exclusion_writer=None, batch_size: int = 64):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.threshold, self.max_fraction = threshold, max_fraction

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        from profanity_check.profanity_check import model, vectorizer  # loads the bundled model once per process

        lines = [[line for line in doc.text.splitlines() if line.strip()] for doc in batch]
        flat = [line for doc_lines in lines for line in doc_lines]
        scores = iter(model.predict_proba(vectorizer.transform(flat))[:, 1] if flat else ())
        verdicts = []
        for doc_lines in lines:
            words = [len(line.split()) for line in doc_lines]
            toxic = sum(n for n, score in zip(words, scores) if score >= self.threshold)  # zip: one score per line
            if toxic:
                self.stat_update("docs_with_toxic_lines")
            verdicts.append(True if toxic <= self.max_fraction * sum(words) else (False, "toxic"))
        return verdicts


class PerSourceBlock(BaseFilter):
    """One block with per-source settings (data.sources[i].blocks): each document goes through the
    filter built for its source (metadata `source`, set by every reader), or passes untouched when its
    source turned the block off (counted as `skipped_by_source`). `default` serves the other sources
    (None: the block is off for them). The inner filters count into this step's stats, and rejected
    documents go to this step's exclusion writer, so the report reads one block as before."""

    def __init__(self, name: str, default: BaseFilter | None, by_source: dict[str, BaseFilter | None],
                 exclusion_writer=None):
        inners = [inner for inner in (default, *by_source.values()) if inner is not None]
        self.name = name  # before PipelineStep's init, which names the stats after it
        super().__init__(exclusion_writer, batch_size=max([1, *(inner.batch_size for inner in inners)]))
        self.default, self.by_source = default, by_source
        for inner in (default, *by_source.values()):
            if inner is not None:
                inner.stats = self.stats

    def inner(self, doc: Document) -> BaseFilter | None:
        source = doc.metadata.get("source")
        return self.by_source[source] if source in self.by_source else self.default

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        """Each inner filter gets its documents as one batch (a batched filter stays batched)."""
        groups: dict[int, tuple[BaseFilter | None, list[int]]] = {}
        for index, doc in enumerate(batch):
            inner = self.inner(doc)
            groups.setdefault(id(inner), (inner, []))[1].append(index)
        verdicts: list = [True] * len(batch)
        for inner, indices in groups.values():
            if inner is None:
                self.stat_update("skipped_by_source", value=len(indices))
                continue
            for index, verdict in zip(indices, inner.filter_batch([batch[i] for i in indices])):
                verdicts[index] = verdict
        return verdicts
