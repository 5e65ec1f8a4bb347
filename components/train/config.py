"""Optimisation settings shared by pretrain, sft and align (each stage's config extends this)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from components.config import check, check_choice, log_only


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    max_steps: int = 1000  # optimizer steps
    # > 0: train this many passes over the training set instead, max_steps derived from its size, batch_size and
    # grad_accum (components/train/epochs.py; logged and in the manifest); 0: max_steps
    num_epochs: int = 0
    batch_size: int = 16  # sequences (pairs for align) per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    weight_decay: float = 0.1  # on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    mixed_precision: str = "bf16"  # bf16 | fp16 (CUDA, with a GradScaler) | no; falls back to fp32 where unsupported
    gradient_checkpointing: bool = log_only(False)  # recompute activations in backward: less memory, same result
    compile: bool = log_only(False)  # torch.compile the training forward: faster steps after a one-off compile, same result to float tolerance
    seed: int = 0
    spike_factor: float = 0.0  # skip an update whose loss exceeds this x its running average (0: only NaN/inf)
    max_spikes_in_a_row: int = 5  # then roll back to the last checkpoint
    log_every: int = log_only(25)  # steps between progress lines
    eval_every: int = log_only(0)  # steps between validation passes (0: only at the end)
    save_every: int = log_only(200)  # steps between checkpoints (resume after a crash)
    keep_checkpoints: int = log_only(2)
    peak_tflops: float = log_only(0.0)  # the device's peak TFLOP/s for MFU (0: known GPUs from a table; CPUs: no MFU)

    def __post_init__(self) -> None:
        section = type(self).__name__.removesuffix("Config").lower()
        check(self.lr > 0, f"{section}.lr", self.lr, "must be > 0")
        check(0 <= self.min_lr_ratio <= 1, f"{section}.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        check(self.max_steps > 0 or (self.max_steps == 0 and self.may_skip_training()), f"{section}.max_steps",
              self.max_steps, "must be > 0" + (" (0 only to import a model unchanged: pretrain.model.init_from)" if self.max_steps == 0 else ""))
        check(self.num_epochs >= 0, f"{section}.num_epochs", self.num_epochs, "must be >= 0 (0: train max_steps steps)")
        check(self.num_epochs == 0 or self.max_steps > 0, f"{section}.num_epochs", self.num_epochs,
              f"{section}.max_steps=0 imports the model unchanged: set num_epochs=0 too")
        # with num_epochs, warmup is checked against the derived steps (epochs.with_epochs)
        check(self.max_steps == 0 or 0 <= self.warmup_steps < (math.inf if self.num_epochs else self.max_steps),
              f"{section}.warmup_steps", self.warmup_steps, f"must be >= 0 and < {section}.max_steps={self.max_steps}")
        check(self.batch_size > 0, f"{section}.batch_size", self.batch_size, "must be > 0")
        check(self.grad_accum > 0, f"{section}.grad_accum", self.grad_accum, "must be > 0")
        check(self.grad_clip > 0, f"{section}.grad_clip", self.grad_clip, "must be > 0")
        check(self.spike_factor == 0 or self.spike_factor > 1, f"{section}.spike_factor", self.spike_factor,
              "must be 0 (off) or > 1")
        check(self.max_spikes_in_a_row > 0, f"{section}.max_spikes_in_a_row", self.max_spikes_in_a_row, "must be > 0")
        check(self.peak_tflops >= 0, f"{section}.peak_tflops", self.peak_tflops, "must be >= 0")
        check_choice(f"{section}.mixed_precision", self.mixed_precision, ("bf16", "fp16", "no"))

    def may_skip_training(self) -> bool:
        """max_steps=0 passes the input model through unchanged (pretrain of an imported checkpoint)."""
        return False


@dataclass(frozen=True, kw_only=True)
class LauncherConfig:
    """How pretrain, sft and align are run: in this process, or by `accelerate launch`.

    The global batch is set by each stage's config and split across processes, so the
    result does not depend on these settings (to float tolerance, tested): they are not
    part of any cache key, and a run can move between machines.
    """

    strategy: str = "single"  # single (in process) | ddp | fsdp (FSDP2), both through `accelerate launch`
    num_processes: int = 1  # processes per machine (GPUs per node; on CPU, gloo processes)
    num_machines: int = 1
    machine_rank: int = 0  # this machine's rank (multi-node: run the pipeline on every node)
    main_process_ip: str = ""  # multi-node: address of machine 0
    main_process_port: int = 0  # 0: a free port on this machine (one machine; concurrent runs never collide); several machines need one fixed
    extra_args: list[str] = field(default_factory=list)  # passed to `accelerate launch` as they are
    # machine ranks > 0: how long to wait for machine 0 to write a stage's manifest (it builds the
    # stages that are not launched, and writes every manifest) before giving up with a message
    follow_timeout_s: int = 86400

    def __post_init__(self) -> None:
        check_choice("launcher.strategy", self.strategy, ("single", "ddp", "fsdp"))
        check(self.num_processes >= 1, "launcher.num_processes", self.num_processes, "must be >= 1")
        check(self.num_machines >= 1, "launcher.num_machines", self.num_machines, "must be >= 1")
        check(0 <= self.machine_rank < self.num_machines, "launcher.machine_rank", self.machine_rank,
              f"must be in [0, launcher.num_machines={self.num_machines})")
        check(self.strategy != "single" or self.num_processes * self.num_machines == 1, "launcher.strategy",
              self.strategy, f"runs one process: choose ddp or fsdp for {self.num_processes * self.num_machines}")
        check(self.follow_timeout_s > 0, "launcher.follow_timeout_s", self.follow_timeout_s, "must be > 0")
        check(self.num_machines == 1 or bool(self.main_process_ip), "launcher.main_process_ip",
              self.main_process_ip, "is needed with several machines")
        check(0 <= self.main_process_port < 65536, "launcher.main_process_port", self.main_process_port,
              "must be in [0, 65536)")
        check(self.num_machines == 1 or self.main_process_port > 0, "launcher.main_process_port",
              self.main_process_port, "must be a fixed port, open between the machines, with several machines")

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_machines
