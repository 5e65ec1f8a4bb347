"""Does the default model shape learn to copy (the induction skill passkey retrieval needs) when the
data is nothing but copying? Random token sequences followed by their exact repeat; accuracy of the
next-token guess on the repeated half, every 25 steps, at the trained span length and at others
(--other-lengths): trained on one length, the model learns to attend that fixed distance back (1.00 at
40, 0.00 at 20, 64 and 100 after 175 steps), not to find the earlier occurrence, which passkey needs. The pretrain defaults' optimizer (AdamW, lr 3e-3,
warmup 30, betas 0.9/0.95, weight decay 0.1, clip 1.0), bf16 autocast where the CPU has it.

    python -m benchmarks.copy_skill [--steps 300] [--length 40] [--batch 16]
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import VOCAB, default_model, quiet


def repeated(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    first = torch.randint(10, VOCAB, (batch, length), generator=generator)  # ids under 10: specials
    return torch.cat([first, first], dim=1)


def copy_accuracy(model, batch: torch.Tensor, length: int) -> float:
    with torch.no_grad():
        guess = model(input_ids=batch).logits[:, length:-1].argmax(-1)
    return (guess == batch[:, length + 1:]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--other-lengths", type=int, nargs="*", default=[20, 64])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    quiet(args.threads)
    generator = torch.Generator().manual_seed(0)
    model = default_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    lengths = [args.length, *args.other_lengths]
    held_out = {n: repeated(32, n, torch.Generator().manual_seed(1)) for n in lengths}
    start = time.perf_counter()
    print(f"{'step':>5} {'loss':>7} " + " ".join(f"{f'copy@{n}':>8}" for n in lengths) + f" {'seconds':>8}")
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = 3e-3 * min(1.0, step / 30)
        batch = repeated(args.batch, args.length, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0:
            accs = " ".join(f"{copy_accuracy(model, held_out[n], n):>8.3f}" for n in lengths)
            print(f"{step:>5} {loss.item():>7.3f} {accs} {time.perf_counter() - start:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
