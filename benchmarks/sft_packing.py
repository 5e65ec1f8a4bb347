"""Packing pays: real (non-pad) training tokens per second, packed vs padded, on the generated sft tasks.

    .venv/bin/python -m benchmarks.sft_packing [--steps 6] [--context 256]

Both runs use the same model, the same examples and the same forward+backward; only
the batch layout differs. Prints each layout's non-pad fraction and real tokens/s, and
the ratio packed / padded (the baseline is measured in the same run).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def measure(rows, cfg, model, pad_id: int, steps: int) -> tuple[float, float]:
    from components.sft.run import make_batch_fn, nonpad_fraction
    from components.train.losses import lm_loss

    batch_fn, bins = make_batch_fn(rows, cfg, model.config.max_position_embeddings, pad_id)
    lm_loss(model, batch_fn(0, 0))[0].backward()  # warm-up
    real, started = 0, time.perf_counter()
    for step in range(1, steps + 1):
        batch = batch_fn(step, 0)
        lm_loss(model, batch)[0].backward()
        real += batch["n_tokens"]
    return nonpad_fraction(rows, bins, cfg), real / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from components.model.build import build_model
    from components.model.config import ModelConfig
    from components.sft.config import SFTConfig
    from components.sft.run import encode_examples
    from components.tasks import sft_examples
    from tests.tiny import make_tokenizer_artifact

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer_artifact(Path(tempfile.mkdtemp())) / "hf")
    model = build_model(ModelConfig(n_layers=2, d_model=128, n_heads=4, n_kv_heads=2, ffn_hidden=320,
                                    context_length=args.context), tokenizer, seed=0)
    examples = [(ex, str(i)) for i, ex in enumerate(sft_examples("train", 2000))]
    rows, _ = encode_examples(tokenizer, examples, args.context)
    mean_len = sum(len(ids) for ids, _ in rows) / len(rows)
    padded = SFTConfig(batch_size=32, max_steps=args.steps, warmup_steps=0)
    # packed: about as many token positions per batch as the padded layout's, in full sequences
    packed = SFTConfig(batch_size=max(1, round(32 * mean_len / args.context)), packing=True, max_steps=args.steps,
                       warmup_steps=0)
    fill_pad, tps_pad = measure(rows, padded, model, tokenizer.pad_token_id, args.steps)
    fill_pack, tps_pack = measure(rows, packed, model, tokenizer.pad_token_id, args.steps)
    print(f"examples: {len(rows)}, mean {mean_len:.1f} tokens, context {args.context}")
    print(f"padded  (batch 32 examples):       non-pad {fill_pad:.3f}  real tokens/s {tps_pad:8.0f}")
    print(f"packed  (batch {packed.batch_size} sequences):        non-pad {fill_pack:.3f}  real tokens/s {tps_pack:8.0f}")
    print(f"ratio packed / padded: non-pad {fill_pack / fill_pad:.2f}x, real tokens/s {tps_pack / tps_pad:.2f}x")


if __name__ == "__main__":
    main()
