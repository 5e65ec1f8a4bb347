"""Token shards: the tokenizer stage's encoder (tokenizer/encode.py) against datatrove's DocumentTokenizer.

    .venv/bin/python benchmarks/token_shards.py [--docs 3000] [--workers 2]

Input: the embedded corpus's prose documents, recombined up to --docs documents (as
benchmarks/data_throughput.py), written once as jsonl.gz shards (one per worker). A BPE
tokenizer trained by the stage (tokenizer/run.train_tokenizer, conf defaults) encodes them:
- ours: read_texts + encode_split (transformers, ProcessPoolExecutor, <s> ids </s>, .bin + .idx.npy)
- datatrove: JsonlReader -> DocumentTokenizer(tokenizer.json, eos </s>, no shuffling) on a
  LocalPipelineExecutor with the same tasks and workers (ids </s>, .ds + .ds.index)
Prints seconds of each (best of --repeats), their ratio, and how many documents get different ids
(ours without its <s>): a literal "<s>" in a document must stay text (split_special_tokens).
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_texts(n_docs: int) -> list[str]:
    from components.data import embedded

    docs = embedded.prose_documents()
    paragraphs = [p for d in docs for p in d.split("\n\n")]
    rng = random.Random(0)
    texts = list(docs)
    while len(texts) < n_docs:
        texts.append("\n\n".join(rng.sample(paragraphs, rng.randint(3, 8))))
    texts.append("A literal <s> and </s> in a document stay text.")
    return texts


def ours(shards: Path, hf: Path, out: Path, workers: int, tok) -> list[list[int]]:
    from tokenizer.encode import encode_split, read_texts

    texts = list(read_texts(shards))
    encode_split(texts, hf, out / "train", workers, tok.bos_token_id, tok.eos_token_id)
    flat, starts = np.fromfile(out / "train.bin", dtype=np.uint16), np.load(out / "train.idx.npy")
    ends = [*starts[1:], flat.size]
    return [flat[s + 1:e].tolist() for s, e in zip(starts, ends)]  # without <s>


def datatrove(shards: Path, hf: Path, out: Path, workers: int, tok) -> list[list[int]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    LocalPipelineExecutor([JsonlReader(str(shards)), DocumentTokenizer(str(out / "ds"), tokenizer_name_or_path=str(hf / "tokenizer.json"),
                                                                      eos_token=tok.eos_token, shuffle_documents=False)],
                          tasks=workers, workers=workers, logging_dir=str(out / "logs"), skip_completed=False).run()
    docs = []
    for path in sorted((out / "ds").glob("*.ds")):
        flat = np.fromfile(path, dtype=np.uint16)
        ends = np.fromfile(f"{path}.index", dtype=np.uint64)
        docs += [flat[s:e].tolist() for s, e in zip([0, *ends[:-1]], ends)]
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from datatrove.utils.logging import logger

    from tokenizer.config import TokenizerConfig
    from tokenizer.run import train_tokenizer

    logger.remove()
    tmp = Path(tempfile.mkdtemp(prefix="token_shards_"))
    texts = build_texts(args.docs)
    shards = tmp / "shards"
    shards.mkdir()
    for w in range(args.workers):
        with gzip.open(shards / f"{w:05d}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts) if i % args.workers == w)
    (tmp / "tok").mkdir()
    tok, _ = train_tokenizer(TokenizerConfig(), texts, texts[:50], tmp / "tok")
    seconds, outputs = {}, {}
    for r in range(args.repeats):
        for name, fn in (("ours", ours), ("datatrove", datatrove))[:: 1 if r % 2 == 0 else -1]:
            out = tmp / f"{name}{r}"
            out.mkdir()
            start = time.perf_counter()
            outputs[name] = fn(shards, tmp / "tok" / "hf", out, args.workers, tok)
            seconds.setdefault(name, []).append(time.perf_counter() - start)
    ours_docs, dt_docs = outputs["ours"], outputs["datatrove"]
    texts_in_order = [t for w in range(args.workers) for i, t in enumerate(texts) if i % args.workers == w]
    different = sum(a != b for a, b in zip(ours_docs, dt_docs)) + abs(len(ours_docs) - len(dt_docs))  # same order
    print(f"{len(texts)} documents, {sum(map(len, ours_docs))} tokens (ours), {args.workers} workers")
    for name, s in seconds.items():
        print(f"{name}: best {min(s):.2f} s of {len(s)}")
    print(f"ratio ours_vs_document_tokenizer={min(seconds['datatrove']) / min(seconds['ours']):.2f}  (higher = ours faster)")
    which = [texts_in_order[i][:60] for i, (a, b) in enumerate(zip(ours_docs, dt_docs)) if a != b]
    print(f"documents encoded differently: {different} of {len(dt_docs)} {which}")


if __name__ == "__main__":
    main()
