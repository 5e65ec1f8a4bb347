"""Data ingestion as datatrove steps: every source format read inside the first pass.

    records.py   outcomes (a document or an issue), validation of one record, stripes
    jsonl.py parquet.py text.py web.py hf.py   one module per format; each imports records.py only
    units.py     the work list: which file (or stripe of a file) each task reads, and the dispatch
    step.py      SourceReader (the first pass's reader, quarantine sink, per-source counters) and
                 SourceCounter (the counting pass a weighted mix needs)
"""
