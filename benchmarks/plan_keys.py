"""How long planning spends on code versions: every stage's closure, cold (a fresh process) and warm.

    .venv/bin/python -m benchmarks.plan_keys

Prints each stage's closure (files, libraries), then the wall and CPU seconds to compute all
seven keys of the default configs (extend on) in a new process and again in the same one.
"""
from __future__ import annotations

import subprocess
import sys
import time

from components.artifacts import REPO_ROOT

_TIMED = """
import time
from components.extend.config import ExtendConfig
from flows.config import PipelineConfig
from flows.plan import make_plan
cfg = PipelineConfig(extend=ExtendConfig(enabled=True))
for label in ("cold", "warm"):
    wall, cpu = time.perf_counter(), time.process_time()
    make_plan(cfg)
    print(f"all keys, {label}: {time.perf_counter() - wall:.3f} s wall, {time.process_time() - cpu:.3f} s CPU")
"""


def main() -> None:
    from components.artifacts import stage_closure
    from components.stages import STAGES

    print(f"{'stage':<10} {'files':>5}  libraries")
    for stage in STAGES.values():
        closure = stage_closure(stage.module)
        print(f"{stage.name:<10} {len(closure.files):>5}  {', '.join(sorted(closure.libraries))}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _TIMED], cwd=REPO_ROOT, check=True)
    print(f"(the new process, imports included: {time.perf_counter() - started:.2f} s)")


if __name__ == "__main__":
    main()
