"""Language id and toxicity blocks on real text: what each keeps and drops, and documents per second.

    .venv/bin/python -m benchmarks.content_filters [--samples ../shared/samples]   # ~10 s

English (kept by both blocks, the default languages: [en]): the CCNet documents, the Alpaca and
LIMA answers and the 20 English hand-extracted news articles of ../shared/samples, split at 50 words
(Gopher's minimum: shorter texts never reach training). Not English (dropped by language id): the
5 other news articles, and short paragraphs in seven languages written here. Offensive (dropped by toxicity):
forum-style threads written here (insults under post headers), and the rejected answers of the
HH-RLHF sample (harmful prompts by design: only some are offensive, so that row counts, not scores).
Prints one table row per set: documents, share kept, docs/s of the block alone.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from datatrove.data import Document

from components.data.config import DataConfig
from components.data.filters import BundledLanguageFilter, ToxicityFilter

NOT_ENGLISH = {
    "fr": "Le conseil municipal a voté hier soir le budget de l'année prochaine. Les habitants du quartier nord "
          "attendent depuis longtemps la rénovation de l'école primaire, qui devrait commencer au printemps.",
    "de": "Die Stadtverwaltung hat gestern den Haushalt für das kommende Jahr beschlossen. Die Bewohner des "
          "Nordviertels warten seit langem auf die Sanierung der Grundschule, die im Frühjahr beginnen soll.",
    "es": "El ayuntamiento aprobó anoche el presupuesto del año que viene. Los vecinos del barrio norte esperan "
          "desde hace tiempo la reforma de la escuela primaria, que debería empezar en primavera.",
    "it": "Il consiglio comunale ha approvato ieri sera il bilancio del prossimo anno. Gli abitanti del quartiere "
          "nord aspettano da tempo la ristrutturazione della scuola elementare, che dovrebbe iniziare in primavera.",
    "pt": "A câmara municipal aprovou ontem à noite o orçamento do próximo ano. Os moradores do bairro norte "
          "esperam há muito tempo pela reforma da escola primária, que deve começar na primavera.",
    "nl": "De gemeenteraad heeft gisteravond de begroting voor volgend jaar goedgekeurd. De bewoners van de "
          "noordwijk wachten al lang op de renovatie van de basisschool, die in het voorjaar moet beginnen.",
    "ru": "Городской совет вчера вечером утвердил бюджет на следующий год. Жители северного района давно ждут "
          "ремонта начальной школы, который должен начаться весной.",
}

OFFENSIVE_THREADS = [
    "Posted by darkwolf77 on 12 March\nYou are a fucking idiot and everyone here knows it.\n"
    "Reply from kingpin\nShut the fuck up, you stupid piece of shit.\n"
    "Reply from darkwolf77\nGo fuck yourself, moron, nobody asked you.",
    "Thread: re: the match last night\nwhat a bunch of worthless bastards, fuck that team\n"
    "Quote from user22: they played fine\nare you retarded? they played like shit, dumbass\n"
    "Posted 3 hours ago\nthis ref is a goddamn asshole, fuck him",
    "Member since 2011 | 430 posts\nlol you are such a dumb bitch\n"
    "Member since 2015 | 12 posts\nscrew you, you ugly cunt\nMember since 2011 | 431 posts\nsuck my dick loser",
]


# news pages of the extraction benchmark that are not in English (read by hand: ko, pt, it, id, pt)
NOT_ENGLISH_NEWS = ("0ec95c7261d1", "11ea381ad92b", "20b2b64916b0", "21486419bb10", "23aaecd14171")


def sample_sets(samples: Path) -> dict[str, list[str]]:
    english = [json.loads(line)["text"] for line in (samples / "pretrain" / "ccnet_en_head-0091_dolma.jsonl").open()]
    for name in ("alpaca_tiny_100_torchtune.json", "lima_30_llamafactory.json"):
        english += [r["output"] for r in json.loads((samples / "sft" / name).read_text()) if r["output"].strip()]
    news = json.loads((samples / "web" / "ground-truth.json").read_text())
    english += [a["articleBody"] for key, a in news.items() if not key.startswith(NOT_ENGLISH_NEWS)]
    hh = [json.loads(line)["rejected"] for line in (samples / "preference" / "hh_rlhf_harmless_base_test_200.jsonl").open()]
    return {"english, >= 50 words (real)": [t for t in english if len(t.split()) >= 50],
            "english, < 50 words (real; Gopher drops these)": [t for t in english if len(t.split()) < 50],
            "not english (real news)": [a["articleBody"] for key, a in news.items() if key.startswith(NOT_ENGLISH_NEWS)],
            "not english (7 languages, written here)": list(NOT_ENGLISH.values()),
            "offensive threads (written here)": OFFENSIVE_THREADS, "hh-rlhf rejected (real)": hh}


def kept_share(block, texts: list[str]) -> tuple[float, float]:
    docs, size = [Document(text=t, id=str(i)) for i, t in enumerate(texts)], block.batch_size
    start = time.perf_counter()  # batches as BaseFilter.run hands them
    kept = sum(v is True for i in range(0, len(docs), size) for v in block.filter_batch(docs[i:i + size]))
    return kept / len(texts), len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", default=str(Path(__file__).resolve().parents[2] / "shared" / "samples"))
    args = parser.parse_args()
    cfg = DataConfig()
    blocks = {"language": BundledLanguageFilter(cfg.languages, cfg.language_threshold, cfg.language_min_words),
              "toxicity": ToxicityFilter(cfg.toxicity_threshold, cfg.toxicity_max_fraction)}
    for block in blocks.values():  # load the bundled models before timing
        block.filter(Document(text="warm up", id="0"))
    print("| set | docs | language: kept | docs/s | toxicity: kept | docs/s |\n|---|---|---|---|---|---|")
    for name, texts in sample_sets(Path(args.samples)).items():
        (lang_kept, lang_rate), (tox_kept, tox_rate) = (kept_share(b, texts) for b in blocks.values())
        print(f"| {name} | {len(texts)} | {lang_kept:.3f} | {lang_rate:.0f} | {tox_kept:.3f} | {tox_rate:.0f} |")


if __name__ == "__main__":
    main()
