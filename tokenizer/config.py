"""Tokenizer stage options (mirrored by conf/tokenizer/default.yaml)."""
from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path

from components.config import check, check_choice, input_path, log_only


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    type: str = "bpe"  # bpe | unigram (sentencepiece model type)
    vocab_size: int = 768  # small corpus (~0.8 MB): a small vocabulary generalises better
    byte_fallback: bool = True  # unknown characters become byte tokens, never <unk>
    split_digits: bool = True  # one token per digit: arithmetic tasks need it
    character_coverage: float = 0.9995  # share of characters that get their own piece; the rare rest become bytes
    cover_ascii: bool = True  # every printable ASCII character gets a piece anyway (prompts use ? + 7 9 [ ] rare in prose)
    max_training_bytes: int = 20_000_000  # cap on text fed to sentencepiece training (whole documents, in order)
    seed: int = 0  # sentencepiece's random generator (training is deterministic given the seed)
    num_workers: int = log_only(2)  # processes encoding the shards (output does not depend on it)
    # an HF checkpoint (or tokenizer) dir whose tokenizer and chat template are used instead of training one
    # (the training keys above are then ignored); follows pretrain.model.init_from
    init_from: str | None = input_path(None, absolute=True)

    def __post_init__(self) -> None:
        check_choice("tokenizer.type", self.type, ("bpe", "unigram"))
        floor = 8 + 256 * self.byte_fallback + 96 * self.cover_ascii + 32
        check(self.vocab_size >= floor, "tokenizer.vocab_size", self.vocab_size,
              f"must be >= {floor} (8 specials, 256 byte tokens if byte_fallback, 96 ASCII characters "
              "if cover_ascii, and some merged pieces)")
        check(self.vocab_size <= 65535, "tokenizer.vocab_size", self.vocab_size, "must fit in uint16 shards (<= 65535)")
        check(0.9 <= self.character_coverage <= 1.0, "tokenizer.character_coverage", self.character_coverage,
              "must be in [0.9, 1]")
        check(self.max_training_bytes > 0, "tokenizer.max_training_bytes", self.max_training_bytes, "must be > 0")
        check(self.num_workers >= 1, "tokenizer.num_workers", self.num_workers, "must be >= 1")
        if self.init_from is not None:
            from components.model.config import missing_checkpoint_files

            missing = missing_checkpoint_files(str(Path(self.init_from).expanduser()), weights=False)
            check(not missing, "tokenizer.init_from", self.init_from, f"no tokenizer to import: {missing}")
