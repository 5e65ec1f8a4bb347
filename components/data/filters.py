"""Quality blocks that wrap datatrove filters so they run offline on user-provided files.

URL blocklist: datatrove's URLFilter with only the user's list (its bundled adult-content
lists stay off) and tldextract's bundled public-suffix snapshot (no fetch).
Language id: datatrove's LanguageFilter with a local fastText model instead of its
download of lid.176.bin.
"""
from __future__ import annotations

from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters import LanguageFilter, URLFilter
from datatrove.utils.lid import FastTextLID


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


class URLBlocklistFilter(URLFilter):
    """Drops documents whose metadata url is on the user's list (reasons: domain, subdomain, url).
    Documents without a url are kept and counted as `no_url`: the list cannot judge them."""

    name = "url_blocklist"

    def __init__(self, blocklist: str | Path, exclusion_writer=None):
        from tldextract import TLDExtract

        domains, urls = read_blocklist(blocklist)
        super().__init__(extra_domains=domains, extra_urls=urls, use_integrated_lists=False,
                         exclusion_writer=exclusion_writer)
        self.tldextractor = TLDExtract(suffix_list_urls=())  # bundled suffix list: never goes online

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if not doc.metadata.get("url"):
            self.stat_update("no_url")
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
