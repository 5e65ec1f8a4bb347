"""Does the default model shape learn to copy (the induction skill passkey retrieval needs) when the
data is nothing but copying? Random token sequences followed by their exact repeat; accuracy of the
next-token guess on the repeated half, every 25 steps, at the trained span length and at others
(--other-lengths): trained on one length, the model learns to attend that fixed distance back (1.00 at
40, 0.00 at 20, 64 and 100 after 175 steps), not to find the earlier occurrence, which passkey needs. The pretrain defaults' optimizer (AdamW, lr 3e-3,
warmup 30, betas 0.9/0.95, weight decay 0.1, clip 1.0), bf16 autocast where the CPU has it.

    python -m benchmarks.copy_skill [--steps 300] [--length 40] [--batch 16]

--task passkey asks the same question of eval's passkey format with nothing else to learn: random filler ids,
a fixed 3-id marker (eval's "The pass key is") before a 5-digit key (digit ids), the filler's rest, a fixed
5-id question ending in the marker, the key again. Scored per digit of the answered key (chance 0.1) and
whole keys, at filler lengths --length and --other-lengths; the key sits at a random depth.

    python -m benchmarks.copy_skill --task passkey --length 25 --other-lengths 100 --lr 1e-3 --steps 700

--loss answer trains on the answered key alone (the rest of the row is context, label -100), so none of the
gradient goes to the unpredictable filler; --layers changes the depth (the default: 4).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from benchmarks.common import VOCAB, Vocabulary, build_model, quiet
from components.model.config import ModelConfig
from components.train import device


def repeated(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    first = torch.randint(10, VOCAB, (batch, length), generator=generator)  # ids under 10: specials
    return torch.cat([first, first], dim=1)


DIGITS, MARKER, QUESTION, AFTER_KEY = (10, 20), [30, 31, 32], [40, 41, 30, 31, 32], 50  # ids under 10: specials


def passkey_rows(batch: int, filler: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, filler + 20]: BOS, filler[:depth], MARKER, key, AFTER_KEY, filler[depth:], QUESTION, key."""
    rows = []
    for _ in range(batch):
        noise = torch.randint(100, VOCAB, (filler,), generator=generator).tolist()
        key = torch.randint(*DIGITS, (5,), generator=generator).tolist()
        at = int(torch.randint(0, filler + 1, (1,), generator=generator))
        rows.append([1, *noise[:at], *MARKER, *key, AFTER_KEY, *noise[at:], *QUESTION, *key])
    return torch.tensor(rows)


def answer_labels(batch: torch.Tensor, answer: int) -> torch.Tensor:
    """Labels for the last `answer` ids alone (the answered key; the repeat task's second half)."""
    labels = torch.full_like(batch, -100)
    labels[:, -answer:] = batch[:, -answer:]
    return labels


def passkey_accuracy(model, batch: torch.Tensor) -> tuple[float, float]:
    """(per-digit, whole-key) accuracy of the next-token guesses at the answered key (the last 5 ids)."""
    with torch.no_grad():
        guess = model(input_ids=batch[:, :-1]).logits[:, -5:].argmax(-1)
    right = guess == batch[:, -5:]
    return right.float().mean().item(), right.all(1).float().mean().item()


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
    parser.add_argument("--task", choices=["repeat", "passkey"], default="repeat")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--loss", choices=["all", "answer"], default="all")
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    quiet(args.threads)
    generator = torch.Generator().manual_seed(0)
    model = build_model(ModelConfig(n_layers=args.layers), Vocabulary(), 0)
    lengths = [args.length, *args.other_lengths]
    rows = repeated if args.task == "repeat" else passkey_rows
    answer = args.length if args.task == "repeat" else 5
    held_out = {n: rows(64, n, torch.Generator().manual_seed(1)) for n in lengths}
    print(f"precision: {'bf16 autocast' if device.cpu_has_native_bf16() else 'fp32 (no native bf16 on this CPU)'}")
    start = time.perf_counter()
    heads = [f"copy@{n}" for n in lengths] if args.task == "repeat" else [f"{k}@{n}" for n in lengths for k in ("digit", "key")]
    print(f"{'step':>5} {'loss':>7} " + " ".join(f"{h:>9}" for h in heads) + f" {'seconds':>8}")

    def report(step: int, loss: float) -> None:
        scores = ([copy_accuracy(model, held_out[n], n) for n in lengths] if args.task == "repeat"
                  else [a for n in lengths for a in passkey_accuracy(model, held_out[n])])
        accs = " ".join(f"{a:>9.3f}" for a in scores)
        print(f"{step:>5} {loss:>7.3f} {accs} {time.perf_counter() - start:>8.1f}", flush=True)

    fit(model, lambda: rows(args.batch, args.length, generator), answer if args.loss == "answer" else 0,
        args.steps, args.lr, report)


def fit(model, next_batch, answer: int, steps: int, lr: float, report=None, warmup: int = 30) -> None:
    """AdamW as pretrain's defaults (betas 0.9/0.95, weight decay 0.1, clip 1.0, linear warmup), bf16
    autocast where the CPU has it natively (emulated bf16 is ~20x slower: components/train/device.py);
    answer > 0: the loss on the last `answer` ids alone. report(step, loss) every 25 steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    precision = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if device.cpu_has_native_bf16() else contextlib.nullcontext
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / warmup)
        batch = next_batch()
        with precision():
            loss = model(input_ids=batch, labels=answer_labels(batch, answer) if answer else batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if report and step % 25 == 0:
            report(step, loss.item())


if __name__ == "__main__":
    main()
