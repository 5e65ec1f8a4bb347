"""How much of the preference do the sft model's states hold where a reward model reads them?

For the generated held-out pairs (align's and reward's), two figures on a frozen sft model:
- its own log-probabilities: the share of pairs with log p(chosen) > log p(rejected) (eval's preference_accuracy);
- a logistic probe per layer on the hidden state at the last token (where AutoModelForSequenceClassification
  reads its score), fitted on the chosen-minus-rejected states of the training pairs, scored on the held-out ones.
A gap between the two says the verdict is in the next-token predictions, not yet at the scored token.

    python -m benchmarks.reward_probe artifacts/sft/<key>/model [--pairs 1500]
"""
from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.common import quiet
from components.align.run import encode_pair
from components.tasks import preference_pairs


@torch.no_grad()
def states_and_logps(model, tokenizer, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """([pairs, 2, layers + 1, d] last-token hidden states, [pairs, 2] summed answer log-probs)."""
    states, logps = [], []
    for pair in pairs:
        rows = []
        for ids, labels in encode_pair(tokenizer, pair):
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            rows.append((torch.stack([h[0, -1] for h in out.hidden_states]),
                         sum(out.logits[0, t - 1].log_softmax(-1)[ids[t]] for t in range(1, len(ids)) if labels[t] != -100)))
        states.append(torch.stack([r[0] for r in rows]))
        logps.append(torch.tensor([float(r[1]) for r in rows]))
    return torch.stack(states), torch.stack(logps)


def probe_accuracy(train: torch.Tensor, heldout: torch.Tensor) -> tuple[float, float]:
    """Logistic regression without bias on standardised differences (L2 1e-3, LBFGS): (train, held-out) accuracy."""
    scale = train.std(0) + 1e-6
    x, xv = train / scale, heldout / scale
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(x @ w)).mean() + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float((x @ w > 0).float().mean()), float((xv @ w > 0).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--pairs", type=int, default=1500)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet(2)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    train, train_lp = states_and_logps(model, tokenizer, preference_pairs("train", args.pairs, args.seed))
    held, held_lp = states_and_logps(model, tokenizer, preference_pairs("heldout", args.heldout, args.seed))
    print(f"log p(chosen) > log p(rejected): held-out {float((held_lp[:, 0] > held_lp[:, 1]).float().mean()):.3f}")
    print(f"{'layer':>5} {'probe train':>12} {'probe held-out':>15}")
    for layer in range(1, train.shape[2]):  # 0: the embedding of the same last token in every row
        fit, score = probe_accuracy(train[:, 0, layer] - train[:, 1, layer], held[:, 0, layer] - held[:, 1, layer])
        print(f"{layer:>5} {fit:>12.3f} {score:>15.3f}")


if __name__ == "__main__":
    main()
