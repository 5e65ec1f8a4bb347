"""Hugging Face datasets as a source: a `save_to_disk` directory, local files read through
`datasets.load_dataset`, or a hub id (online only: offline it is one clear ValueError)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

from components.data.ingest.records import (WHOLE, Outcome, RowFields, Stripe, as_fields, read_table_rows,
                                            unreadable)
from components.data.sources import SourceSpec, check_hub_reachable, expand_files, is_hub_id, is_saved_dataset

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def _builder(files: list[Path], spec: SourceSpec) -> str:
    suffixes = {"".join(s for s in f.suffixes if s != ".gz") or f.suffix for f in files}
    builders = {BUILDERS.get(s) for s in suffixes}
    if len(builders) != 1 or None in builders:
        raise ValueError(f"{spec.key}.path={spec.path!r}: datasets reads one format per source, "
                         f"from {sorted(BUILDERS)} (found {sorted(suffixes)})")
    return builders.pop()


def _pick_split(loaded, spec: SourceSpec):
    from datasets import DatasetDict

    if not isinstance(loaded, DatasetDict):
        return loaded
    if spec.split not in loaded:
        raise ValueError(f"{spec.key}.split={spec.split!r}: {spec.path!r} has splits {sorted(loaded)}")
    return loaded[spec.split]


def load(spec: SourceSpec, cache_dir: str):
    """The dataset (one split) a spec names."""
    import datasets

    path = Path(spec.path).expanduser()
    if is_saved_dataset(path):
        return _pick_split(datasets.load_from_disk(str(path)), spec)
    if is_hub_id(spec.path):
        check_hub_reachable(spec)
        try:
            return datasets.load_dataset(spec.path, spec.subset, split=spec.split, revision=spec.revision,
                                         cache_dir=cache_dir)
        except (ConnectionError, OSError) as err:
            raise ValueError(f"{spec.key} ({spec.name}): cannot reach the hub dataset {spec.path!r}, "
                             f"offline or unknown ({type(err).__name__}: {err})") from None
    files = expand_files(spec)
    return datasets.load_dataset(_builder(files, spec), data_files={spec.split: [str(f) for f in files]},
                                 split=spec.split, cache_dir=cache_dir)


def read_hf(spec: SourceSpec, fields: RowFields | str, max_bytes: int, stripe: Stripe = WHOLE) -> Iterator[Outcome]:
    """Each stripe loads the dataset (memory-mapped) and checks the rows it owns only."""
    from datasets.exceptions import DatasetGenerationError

    with tempfile.TemporaryDirectory(prefix="hf-source-") as cache_dir:  # no stale copies in ~/.cache
        try:
            dataset = load(spec, cache_dir)
        except (OSError, DatasetGenerationError) as err:  # corrupt arrow / unparsable local files: the whole source
            if stripe.index == 0:
                yield unreadable(spec.path, err.__cause__ or err)
            return
        columns = list(dataset.column_names)
        wanted = as_fields(fields).columns(columns)

        def rows() -> Iterator[dict]:
            for batch in dataset.select_columns(wanted).iter(batch_size=1000):
                yield from (dict(zip(batch, values)) for values in zip(*batch.values()))

        label = spec.path if is_hub_id(spec.path) else str(Path(spec.path))
        yield from read_table_rows(rows(), columns, fields, label, spec.name, max_bytes, stripe)
