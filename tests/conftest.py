import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"

for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",  # tests of wandb itself set offline
    "WANDB_SILENT": "true",
    "WANDB_ERROR_REPORTING": "false",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # components log outside flows in unit tests
}.items():
    os.environ.setdefault(_name, _value)

# Tests never write into the user's Prefect server or database: this session gets its own
# PREFECT_HOME (so the temporary server's SQLite db and profiles are here), and no API URL or
# profile from the environment (the Makefile exports PREFECT_HOME=<repo>/.prefect).
TEST_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="llm-pipeline-tests-prefect-"))
os.environ["PREFECT_HOME"] = str(TEST_PREFECT_HOME)
for _name in [n for n in os.environ if n in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE",
                                              "PREFECT_PROFILES_PATH", "PREFECT_API_DATABASE_CONNECTION_URL",
                                              "PREFECT_SERVER_DATABASE_CONNECTION_URL")]:
    del os.environ[_name]
atexit.register(shutil.rmtree, TEST_PREFECT_HOME, ignore_errors=True)

# under pytest-xdist (`make test` runs 2 workers) the cores are split between the workers
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples is absent")
    return SAMPLES


@pytest.fixture(params=[True, False], ids=["native_bf16_cpu", "no_bf16_cpu"])
def cpu_bf16(request, monkeypatch):
    """Pretend to be either kind of CPU (no GPU), so both precision branches run on every host: a
    CPU with native bf16 (AVX512-BF16/AMX) trains in bf16, one without falls back to fp32."""
    from components.train import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: request.param)
    return request.param
