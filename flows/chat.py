"""`python -m flows.chat [stage | model dir] [hydra overrides] [flags]` (`make chat ARGS=...`): talk to a model.

    python -m flows.chat                              the aligned model of the default config
    python -m flows.chat sft experiment=smoke         the sft model of that config (its artifact by key)
    python -m flows.chat artifacts/sft/<key>/model    any exported model directory, as it is
    python -m flows.chat sft --prompt "What is 2 + 3?" --temperature 0.7 --top-p 0.9

A stage (pretrain | extend | sft | align) is the artifact the pipeline's plan gives that stage for the
config of the overrides, as `make pipeline` composes it; one not built yet is named with the command
that builds it. Wiring only: the chat itself is components/chat/session.py.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

STAGES = ("pretrain", "extend", "sft", "align")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("args", nargs="*", help="a stage (default align) or a model directory, then Hydra overrides")
    parser.add_argument("--prompt", help="answer this one message and exit (no interactive loop)")
    parser.add_argument("--system", help="system prompt, the first turn of every conversation")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer budget in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above 0: sampling")
    parser.add_argument("--top-k", type=int, help="sampling: keep the k likeliest tokens")
    parser.add_argument("--top-p", type=float, help="sampling: keep the smallest set of tokens of this probability")
    parser.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (not streamed)")
    parser.add_argument("--repetition-penalty", type=float, help="> 1 penalises tokens already in the conversation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled answers")
    args = parser.parse_args(argv)
    targets = [a for a in args.args if "=" not in a]
    if len(targets) > 1:
        parser.error(f"one stage or model directory, got {targets}")
    args.target = targets[0] if targets else "align"
    args.overrides = [a for a in args.args if "=" in a]
    return args


def resolve_model_dir(target: str, overrides: list[str]) -> Path:
    """The model directory a stage name (its artifact for this config) or a path names; ValueError says why not."""
    if target not in STAGES:
        path = Path(target)
        if not path.exists():
            raise ValueError(f"{target!r} is neither a stage ({', '.join(STAGES)}) nor an existing directory")
        if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
            path = path / "model"  # an artifact directory: its exported model
        if not (path / "config.json").is_file():
            raise ValueError(f"{path}: no config.json: not a Hugging Face model directory")
        return path
    from components.artifacts import is_complete
    from flows.compose import compose_pipeline_config
    from flows.plan import artifacts_root, make_plan

    cfg = compose_pipeline_config([*overrides, f"run.until={target}"])
    step = make_plan(cfg)[-1]
    path = step.path(artifacts_root(cfg.run))
    if not is_complete(path):
        args = " ".join(shlex.quote(o) for o in [f"run.until={target}", *overrides])
        raise ValueError(f"no {target} model for this config yet ({path} is not built): build it with "
                         f"`make pipeline ARGS={shlex.quote(args)}` (or `python -m flows.pipeline {args}`)")
    return path / "model"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bar between the turns
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from omegaconf.errors import OmegaConfBaseException

    from components.chat.session import Chat, converse, decoding_kwargs, load_model, stdout_writer

    try:
        model_dir = resolve_model_dir(args.target, args.overrides)
        decoding = decoding_kwargs(args.temperature, args.top_k, args.top_p, args.num_beams, args.repetition_penalty)
        model, tokenizer = load_model(model_dir)
        chat = Chat(model, tokenizer, decoding, args.max_new_tokens, args.system, args.seed)
    except (ValueError, OmegaConfBaseException) as err:  # a config error, a missing artifact, a bad flag: exit 2
        sys.stderr.write(f"chat: {err}\n")
        sys.exit(2)
    if args.prompt is not None:
        chat.reply(args.prompt, stdout_writer)
        return
    sys.stderr.write(f"chat with {model_dir}\n")
    converse(chat, sys.stdin, stdout_writer, interactive=sys.stdin.isatty())


if __name__ == "__main__":
    main()
