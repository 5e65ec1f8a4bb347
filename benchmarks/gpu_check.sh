#!/usr/bin/env bash
# The GPU check, one script, under 8 minutes on one GPU: the GPU-only tests, a few steps of
# pretrain, sft and DPO through the real loop in bf16 (tests/test_gpu.py), then pretraining
# throughput of a GPT-2-small-sized LLaMA (124M, context 1024, bf16) with tokens/s and MFU,
# eager and compiled. It needs only torch, transformers, accelerate, peft and pytest (no
# Prefect, Hydra, datatrove or wandb), so it runs with a GPU machine's own Python:
#
#     bash benchmarks/gpu_check.sh            # PYTHON=... to choose the interpreter (default python3)
#
# Paste what it prints into benchmarks/README.md ("GPU check").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
       WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
status=0
echo "== $(date -u +%F) machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || status=1
$PY -c 'import sys, torch, transformers, accelerate; print("python", sys.version.split()[0], "torch", torch.__version__,
"transformers", transformers.__version__, "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available())'
echo "== GPU tests (pretrain, sft, DPO and eval on the GPU in bf16)"
timeout 240 $PY -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_gpu.py || status=1
echo "== pretraining throughput, eager"
timeout 120 $PY -m benchmarks.gpu_throughput --steps 25 || status=1
echo "== pretraining throughput, compiled"
timeout 180 $PY -m benchmarks.gpu_throughput --steps 25 --compile || status=1
echo "== gpu_check exit $status"
exit $status
