"""The held-out share of the user's own sources, written into the sft / align artifact (heldout.jsonl) so the
eval stage scores every model on it from the artifact, without reading the source files again."""
from __future__ import annotations

import json
import os
from pathlib import Path

HELDOUT_FILE = "heldout.jsonl"


def write_heldout(out_dir: Path, rows: list[dict]) -> None:
    """One record a line (sft: {messages, where, source}; align: {prompt, chosen, rejected, where, source}),
    written atomically; nothing when there is none (generated data: eval has its own held-out tasks)."""
    if not rows:
        return
    path = Path(out_dir) / HELDOUT_FILE
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(tmp, path)


def read_heldout(artifact: Path | str | None) -> list[dict]:
    """The records an upstream artifact held out ([] when it has none: generated data, or an older artifact)."""
    path = Path(artifact or "") / HELDOUT_FILE
    if not artifact or not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON record ({err}); rebuild the stage that wrote it") from None
    return rows
