"""Tokenizer stage: train sentencepiece on the cleaned corpus, export for transformers, encode shards."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import sentencepiece as spm

from tokenizer.config import TokenizerConfig
from tokenizer.encode import encode_documents, encode_split, read_texts
from tokenizer.train import export_hf, train_sentencepiece

log = logging.getLogger(__name__)


def _capped(texts: list[str], max_bytes: int):
    used = 0
    for text in texts:
        if used >= max_bytes:
            return
        used += len(text.encode())
        yield text


def run(cfg: TokenizerConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    data = Path(inputs["data"])
    train_texts, val_texts = list(read_texts(data / "train")), list(read_texts(data / "validation"))
    if not train_texts or not val_texts:
        raise ValueError(f"tokenizer: {data} has {len(train_texts)} train and {len(val_texts)} validation documents")
    started = time.time()
    model_file = train_sentencepiece(cfg, _capped(train_texts, cfg.max_training_bytes), out_dir / "spm")
    tok = export_hf(model_file, cfg.type, out_dir / "hf")
    log.info("tokenizer: %s vocab %d trained in %.1fs", cfg.type, len(tok), time.time() - started)

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    mismatched = sum(a != b for a, b in zip(sp.encode(val_texts), encode_documents(tok, val_texts)))
    log.info("tokenizer: %d/%d validation documents encode differently in transformers and sentencepiece",
             mismatched, len(val_texts))

    (out_dir / "shards").mkdir()
    counts = {}
    for split, texts in (("train", train_texts), ("validation", val_texts)):
        counts[split] = encode_split(texts, out_dir / "hf", out_dir / "shards" / split, cfg.num_workers,
                                     tok.bos_token_id, tok.eos_token_id)
    val_bytes = sum(len(t.encode()) for t in val_texts)
    val_content_tokens = counts["validation"] - 2 * len(val_texts)
    return {
        "vocab_size": len(tok),
        "bytes_per_token": round(val_bytes / max(1, val_content_tokens), 4),
        "train_tokens": counts["train"],
        "validation_tokens": counts["validation"],
        "train_docs": len(train_texts),
        "hf_spm_mismatch_rate": round(mismatched / len(val_texts), 6),
    }
