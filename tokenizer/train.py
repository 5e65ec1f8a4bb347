"""Train a sentencepiece BPE or Unigram model and export it as a Hugging Face tokenizer.

The sentencepiece model is trained with identity normalisation and no whitespace
folding, so text round-trips exactly. The Hugging Face tokenizer rebuilds the same
model in `tokenizers` (Unigram from the pieces and scores; BPE with the merges that
transformers' converter derives) with sentencepiece's dummy-prefix rule as a
normaliser, so it gives sentencepiece's ids on plain text (the stage measures it).

Unigram needs two more steps to be exact:
- sentencepiece sums path scores in float32, `tokenizers` in float64, so exact ties
  (e.g. "==" "=" vs "=" "==" in a run of "=") broke differently. The scores are
  rounded to multiples of 1/32 in the saved model itself: every path sum is then
  exact in both precisions (up to ~|2^19|, i.e. documents of ~50k tokens) and both
  libraries keep the first best path.
- sentencepiece never matches control and byte pieces ("<s>", "<|user|>", "<0x41>")
  in text; `tokenizers` would (score 0). They get a score far below any real piece.

The special tokens (<unk> <s> </s> <pad> and the chat tokens, ids 0-7) are control
symbols: document text never produces them (shards are encoded with
`split_special_tokens=True`), while the chat template's literal "<|user|>" etc.
are matched as special tokens by transformers.
"""
from __future__ import annotations

import io
import shutil
import string
import tempfile
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from tokenizer.config import TokenizerConfig

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# <s> then <|role|>content<|end|> per message; assistant content is marked for
# return_assistant_tokens_mask; a generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


ASCII = "".join(c for c in string.printable if c not in " \r\x0b\x0c")  # space is "▁" in sentencepiece
SCORE_GRID = 2 ** 40  # unigram scores are rounded to multiples of 1 / SCORE_GRID (see module docstring)
UNMATCHABLE = -1000.0  # below any real piece: control and byte pieces never win a Viterbi path


def train_sentencepiece(cfg: TokenizerConfig, texts: Iterable[str], prefix: Path) -> Path:
    """Write <prefix>.model and <prefix>.vocab (bytes depend only on cfg and texts, not on the path)."""
    from sentencepiece import sentencepiece_model_pb2

    spm.set_random_generator_seed(cfg.seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type=cfg.type,
        vocab_size=cfg.vocab_size,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=cfg.split_digits,
        byte_fallback=cfg.byte_fallback,
        character_coverage=cfg.character_coverage,
        required_chars=ASCII if cfg.cover_ascii else "",
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
        control_symbols=CHAT_TOKENS,  # fixed ids 4-7; like <s>, never matched in document text
        max_sentence_length=1 << 16,
        num_threads=2,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    if cfg.type == "unigram":  # so float32 and float64 Viterbi agree on ties (module docstring)
        for piece in proto.pieces:
            piece.score = round(piece.score * SCORE_GRID) / SCORE_GRID
    model_file = prefix.with_suffix(".model")
    model_file.write_bytes(proto.SerializeToString())
    prefix.with_suffix(".vocab").write_text("".join(f"{p.piece}\t{p.score:g}\n" for p in proto.pieces), encoding="utf-8")
    return model_file


def _backend(model_file: Path, kind: str):
    """A `tokenizers.Tokenizer` equal to the sentencepiece model on plain text."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import LlamaTokenizer

    if kind == "unigram":
        sp = spm.SentencePieceProcessor(model_file=str(model_file))
        ids = range(sp.get_piece_size())
        hidden = {i for i in ids if sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i)}
        lowest = min(sp.get_score(i) for i in ids if i not in hidden)
        vocab = [(sp.id_to_piece(i), lowest + UNMATCHABLE if i in hidden else sp.get_score(i)) for i in ids]
        byte_fallback = any(sp.is_byte(i) for i in ids)
        backend = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=byte_fallback))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(model_file, Path(tmp) / "tokenizer.model")
            backend = LlamaTokenizer.from_pretrained(tmp).backend_tokenizer
    # sentencepiece prefixes "▁" to every input and maps each space to "▁", leading spaces included.
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return backend


def export_hf(model_file: Path, kind: str, out_dir: Path):
    """Save a tokenizer that AutoTokenizer loads, with the chat special tokens and template."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_backend(model_file, kind),
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=CHAT_TOKENS,
        add_bos_token=False, add_eos_token=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok
