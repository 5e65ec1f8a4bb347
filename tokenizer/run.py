"""Tokenizer stage: train sentencepiece on the cleaned corpus (or import a checkpoint's tokenizer), export
for transformers, encode shards."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import sentencepiece as spm

from components.context import StageContext
from components.evidence import empty_corpus
from tokenizer.config import TokenizerConfig
from tokenizer.encode import encode_documents, encode_split, read_texts, shard_dtype
from tokenizer.train import export_hf, train_sentencepiece

log = logging.getLogger(__name__)


def _capped(texts: list[str], max_bytes: int):
    used = 0
    for text in texts:
        if used >= max_bytes:
            return
        used += len(text.encode())
        yield text


def import_tokenizer(path: str, out_dir: Path):
    """The checkpoint's own tokenizer and chat template, saved as this stage's hf/ (what later stages load)."""
    from transformers import AutoTokenizer

    from components.chat.template import encode_chat

    tok = AutoTokenizer.from_pretrained(path)
    if not tok.chat_template:
        raise ValueError(f"config error: tokenizer.init_from={path!r}: its tokenizer has no chat template "
                         "(sft and align render conversations with it): add a chat_template to its "
                         "tokenizer_config.json or chat_template.jinja")
    if tok.eos_token is None:
        raise ValueError(f"config error: tokenizer.init_from={path!r}: its tokenizer has no eos token "
                         "(documents in the shards end with it)")
    if tok.pad_token is None:  # padding positions are masked out: any id serves
        log.warning("NOTE: tokenizer of %s has no pad token; padding with its eos token %r", path, tok.eos_token)
        tok.pad_token = tok.eos_token
    try:
        encode_chat(tok, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    except ValueError as err:
        log.warning("NOTE: the chat template of %s does not fit sft/align's assistant-only labels (%s): "
                    "continued pretraining works, sft and align will fail", path, err)
    tok.save_pretrained(out_dir / "hf")
    log.info("tokenizer: imported from %s (vocab %d); tokenizer.type/vocab_size/... are ignored", path, len(tok))
    return tok


def train_tokenizer(cfg: TokenizerConfig, train_texts: list[str], val_texts: list[str], out_dir: Path):
    """Train sentencepiece, export it for transformers; also return how many documents encode differently."""
    started = time.time()
    model_file = train_sentencepiece(cfg, _capped(train_texts, cfg.max_training_bytes), out_dir / "spm")
    tok = export_hf(model_file, cfg.type, out_dir / "hf")
    log.info("tokenizer: %s vocab %d trained in %.1fs", cfg.type, len(tok), time.time() - started)

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    mismatched = sum(a != b for a, b in zip(sp.encode(val_texts), encode_documents(tok, val_texts)))
    log.info("tokenizer: %d/%d validation documents encode differently in transformers and sentencepiece",
             mismatched, len(val_texts))
    return tok, {"hf_spm_mismatch_rate": round(mismatched / len(val_texts), 6)}


def run(cfg: TokenizerConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    data = Path(inputs["data"])
    train_texts, val_texts = list(read_texts(data / "train")), list(read_texts(data / "validation"))
    if not train_texts or not val_texts:
        raise ValueError(f"tokenizer: {empty_corpus(data, len(train_texts), len(val_texts))}")
    if cfg.init_from:
        tok, extra = import_tokenizer(cfg.init_from, out_dir), {"imported_from": cfg.init_from}
    else:
        tok, extra = train_tokenizer(cfg, train_texts, val_texts, out_dir)

    (out_dir / "shards").mkdir()
    dtype = shard_dtype(len(tok))
    (out_dir / "shards" / "meta.json").write_text(json.dumps({"dtype": dtype.name}))
    counts = {}
    for split, texts in (("train", train_texts), ("validation", val_texts)):
        counts[split] = encode_split(texts, out_dir / "hf", out_dir / "shards" / split, cfg.num_workers,
                                     tok.bos_token_id, tok.eos_token_id, dtype)
    val_bytes = sum(len(t.encode()) for t in val_texts)
    markers_per_doc = 1 + (tok.bos_token_id is not None)
    val_content_tokens = counts["validation"] - markers_per_doc * len(val_texts)
    return {
        "vocab_size": len(tok),
        "bytes_per_token": round(val_bytes / max(1, val_content_tokens), 4),
        "train_tokens": counts["train"],
        "validation_tokens": counts["validation"],
        "train_docs": len(train_texts),
        **extra,
    }
