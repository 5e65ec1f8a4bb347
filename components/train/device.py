"""Where tensors live and in which precision training runs: one place, so CPU and GPU share every path.

Batches are built on the CPU (data loading, padding) and moved here to the device the
model was placed on; reductions and reference passes use the same device. The precision
requested by config is resolved against what the hardware does natively.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without either, bf16 on a CPU is emulated (measured 20x slower than fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def fp16_supported() -> bool:
    """fp16 autocast with a GradScaler needs a GPU: Accelerate ignores fp16 on a CPU (no autocast, no scaler)."""
    return torch.cuda.is_available()


def resolve_precision(requested: str) -> str:
    """The precision training really uses: the requested one where the hardware runs it natively, else fp32."""
    if requested == "bf16" and not bf16_supported():
        log.warning("NOTE: mixed_precision=bf16 requested but this device has no native bf16; training in fp32")
        return "no"
    if requested == "fp16" and not fp16_supported():
        log.warning("NOTE: mixed_precision=fp16 requested but fp16 autocast needs a GPU; training in fp32")
        return "no"
    return requested


def default_device() -> torch.device:
    """Where a stage without an Accelerator (eval, reference passes before prepare) computes."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's parameters (the first one: a prepared model lives on one device)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with every tensor on `device` (counts and other values as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
