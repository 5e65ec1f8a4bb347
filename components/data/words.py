"""One spaCy word tokenizer for the blocks that split text into words or sentences.

Gopher quality, Gopher repetition, C4 (sentences per line), FineWeb (words per newline), MinHash
signatures and the cluster guard would all call datatrove's `SpaCyTokenizer`, which opens a
spaCy memory zone around every call: each word that is not in spaCy's base vocabulary is created
again for every document (`Vocab._new_lexeme` was over a third of the quality pass). This
subclass gives the same tokens and sentences (the rules do not depend on the vocabulary;
tests/test_data_blocks.py compares both on the embedded corpus; the one exception is text
holding the literal `IS_ALPHA`, below) but keeps the vocabulary between documents, and starts a
fresh one past `max_lexemes` (about 425 bytes each with their strings and cached splits: 200,000
are ~85 MB) so memory stays bounded on a large corpus; one pipeline per process, shared by every
step that asks. Word tokens come from spaCy's tokenizer alone: the sentencizer that datatrove's
call also runs only marks sentence starts.

Filters take it as their `language` (datatrove's hook for custom tokenizers). Give every
block of one pass the same instance: datatrove caches the words of the last texts
(`split_into_parts`, keyed by text and tokenizer), so Gopher repetition reuses the words
Gopher quality split.
"""
from __future__ import annotations

from datatrove.utils.word_tokenizers import SpaCyTokenizer, strip_strings

# spaCy fails on this attribute name once a memory zone has seen it, and datatrove then splits the text
# without it: every time but the first in a process. Here it is always deleted, as datatrove's retry does.
DATATROVE_SPECIAL = "IS_ALPHA"

_PIPELINES: dict = {}  # language -> spaCy pipeline, one per process: copies of a step share its vocabulary


class WarmSpaCyTokenizer(SpaCyTokenizer):
    """datatrove's spaCy word and sentence tokenizer without a memory zone per call."""

    def __init__(self, language: str = "en", max_lexemes: int = 200_000):
        super().__init__(language)
        assert self.config is None and language != "ja", f"{language}: datatrove configures spaCy specially, use its tokenizer"
        self.max_lexemes = max_lexemes

    @property
    def tokenizer(self):
        nlp = _PIPELINES.get(self.language)
        if nlp is None or len(nlp.vocab) > self.max_lexemes:  # past the limit: spaCy's base vocabulary again
            import spacy

            nlp = _PIPELINES[self.language] = spacy.blank(self.language)  # as datatrove builds it
            nlp.add_pipe("sentencizer")
        return nlp

    def word_tokenize(self, text: str) -> list[str]:
        text = text.replace(DATATROVE_SPECIAL, "")
        nlp = self.tokenizer
        nlp.max_length = len(text) + 10
        return strip_strings([token.text for token in nlp.tokenizer(text)])

    def sent_tokenize(self, text: str) -> list[str]:
        text = text.replace(DATATROVE_SPECIAL, "")
        return strip_strings([sent.text for doc in self._do_tokenize(text) for sent in doc.sents])

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:  # datatrove's retry: spans in the shortened text
        text = text.replace(DATATROVE_SPECIAL, "")
        return [(sent.start_char, sent.end_char) for doc in self._do_tokenize(text) for sent in doc.sents]
