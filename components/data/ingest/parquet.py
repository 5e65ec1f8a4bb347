"""Parquet tables: one document per row, read in batches of the columns a document keeps only
(text, id, url, date, declared metadata: components/data/ingest/fields.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from components.data.ingest.records import (UNREADABLE, WHOLE, Outcome, RowFields, Stripe, as_fields, read_table_rows,
                                            unreadable)


def read_parquet(path: Path, fields: RowFields | str, max_bytes: int, source: str, file: str,
                 stripe: Stripe = WHOLE) -> Iterator[Outcome]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        columns = table.schema_arrow.names
        wanted = as_fields(fields).columns(columns)

        def rows() -> Iterator[dict]:
            for batch in table.iter_batches(batch_size=1024, columns=wanted):
                yield from batch.to_pylist()

        yield from read_table_rows(rows(), columns, fields, file, source, max_bytes, stripe)
    except UNREADABLE + (pyarrow.ArrowException,) as err:
        if stripe.index == 0:
            yield unreadable(file, err)
