"""The one training loop behind pretrain, sft and align.

An objective differs only through `loss_fn(model, batch) -> (loss_sum, metrics)`.
Batches come from `batch_fn(step, micro)`, a pure function of the position, so a
resumed run continues on exactly the data it would have seen, without replay.
Each batch carries "n_targets" (tokens, or pairs for DPO): the loss is normalised by
the targets of the whole accumulated batch, so accumulation 4 x 2 equals batch 8.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType

from components.context import StageContext
from components.model.export import save_export
from components.train import adapters, budget, checkpoint, compiling, device, lora, tracking
from components.train.config import TrainConfig
from components.train.guard import ACCEPT, SKIP, SpikeGuard
from components.train.state import Clock, StepLog, TrainState

log = logging.getLogger(__name__)

BatchFn = Callable[[int, int], dict]
LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]
MAX_ROLLBACKS = 3  # then the run fails: repeated divergence needs a person, not more retries


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if getattr(cfg, "adapter", "none") == "qlora":  # QLoRA's paged AdamW: optimizer states page to CPU under pressure
        import bitsandbytes

        return bitsandbytes.optim.PagedAdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **adamw_kernel(decay + no_decay))


def adamw_kernel(params: list[torch.Tensor]) -> dict:
    """AdamW's implementation: fused (one kernel per step) where torch has it for every parameter's
    device (CPU and CUDA in torch 2.13), else foreach (one kernel per op over all tensors). The same
    update to float tolerance as the per-tensor loop torch picks by default on a CPU (tested)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    fused = bool(params) and all(p.device.type in _get_fused_kernels_supported_devices() and p.is_floating_point()
                                 for p in params)
    return {"fused": True} if fused else {"foreach": True}


def decoder_layer_classes(model: torch.nn.Module | None) -> list[str]:
    """The block FSDP shards by: the model's own no-split modules (LlamaDecoderLayer, MixtralDecoderLayer, ...)."""
    return sorted(getattr(model, "_no_split_modules", None) or ["LlamaDecoderLayer"])


def make_accelerator(cfg: TrainConfig, model: torch.nn.Module | None = None, strategy: str = "single") -> Accelerator:
    """Single process, DDP or FSDP2: the stage context's strategy (the launcher's, launch.py).

    Each call starts from a fresh AcceleratorState: Accelerate keeps one per process and
    refuses a second Accelerator with another precision, yet stages (and tests) run one
    after another in one process, each with its own precision. The process group
    (PartialState) is kept: it belongs to the process, not to a stage.
    """
    precision = device.resolve_precision(cfg.mixed_precision)
    reset_accelerator_state()
    fsdp_plugin = None
    if strategy == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=decoder_layer_classes(model), reshard_after_forward=True,
            state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=False)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision, fsdp_plugin=fsdp_plugin)
    if fsdp_plugin and accelerator.num_processes > 1 and accelerator.distributed_type != DistributedType.FSDP:
        # Accelerate 1.15 silently falls back to DDP on CPU (measured); FSDP2 itself works there on gloo
        if precision != "no":
            fsdp_plugin.set_mixed_precision(precision)
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = fsdp_plugin
        # every later AcceleratorState() (e.g. in prepare) re-copies the type from PartialState
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator


def reset_accelerator_state() -> None:
    """Forget the previous stage's precision and plugins (Accelerate's singletons), keep the process group."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    if PartialState._shared_state.get("distributed_type") == DistributedType.FSDP:
        # set by the FSDP path below; PartialState() would otherwise hand it to the next Accelerator
        PartialState._shared_state["distributed_type"] = (
            DistributedType.MULTI_GPU if torch.cuda.is_available() else DistributedType.MULTI_CPU)


def shard(batch: dict, rank: int, world: int) -> dict:
    """This rank's rows of a global micro-batch; counts ("n_targets", "n_tokens") stay global."""
    if world == 1:
        return batch
    return {k: v.tensor_split(world)[rank] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
            for k, v in batch.items()}


def accumulate_gradients(model: torch.nn.Module, batches: list[dict], loss_fn: LossFn,
                         accelerator: Accelerator) -> tuple[float, int, dict]:
    """Backward over micro-batches, normalised by the targets of all of them on all ranks.

    Each batch is this rank's shard (moved here to the model's device); its n_targets counts
    the whole global micro-batch. DDP and FSDP average gradients over ranks, hence the factor
    world / n_targets. The loss stays on the device until the step's one synchronisation.
    """
    world = accelerator.num_processes
    n_targets = sum(int(b["n_targets"]) for b in batches)
    loss_total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    extras: dict = {}
    penalty = adapters.orthogonal_penalty(accelerator.unwrap_model(model))  # AdaLoRA's, once a step in all
    for batch in batches:
        batch = device.to_device(batch, accelerator.device)
        with accelerator.autocast():
            loss_sum, metrics = loss_fn(model, batch)
        scaled = loss_sum * (world / max(1, n_targets))
        if penalty is not None:  # the same on every rank: the ranks' mean keeps it whole; not in the logged loss
            regulariser = penalty() / len(batches)
            scaled = scaled + regulariser
            metrics = {**metrics, "orth_reg": float(regulariser.detach()) * len(batches)}
        accelerator.backward(scaled)
        loss_total += loss_sum.detach().double()
        for k, v in metrics.items():
            extras[k] = extras.get(k, 0.0) + float(v) / len(batches)
    totals = torch.stack([loss_total, *(torch.tensor(float(v), dtype=torch.float64, device=accelerator.device)
                                        for v in extras.values())])
    if world > 1:  # every rank sees the same totals (and so takes the same spike decision)
        totals = accelerator.reduce(totals, "sum")
        totals[1:] /= world
    totals = totals.tolist()
    return totals[0], n_targets, dict(zip(extras, totals[1:]))


def local_parameter_share(model: torch.nn.Module) -> float:
    """Share of the parameters held by this rank: 1.0 unless the model is sharded (FSDP)."""
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    return local / max(1, budget.count_parameters(model))


def save_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer, path: Path) -> None:
    """A plain Hugging Face directory, gathered from every rank (collective: all ranks call it).
    A LoRA, AdaLoRA or IA3 model is merged in place first, other adapters saved in path/adapter beside
    their base (lora.exportable): call it once training is over."""
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # gathered onto rank 0's CPU (our checkpoints stay sharded; the export is one plain file)
        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        plain, state_dict = lora.exportable(accelerator.unwrap_model(model), state_dict, sharded, path)
        save_export(plain, tokenizer, path, state_dict)  # stops at the end of a turn, readable files
    accelerator.wait_for_everyone()


def announce_budget(model: torch.nn.Module, cfg: TrainConfig, first_batch: dict, accelerator: Accelerator) -> dict:
    """Log and return FLOPs per token, the per-rank memory estimate and the device's peak FLOP/s."""
    world = accelerator.num_processes
    n_params, n_layers, d_model = budget.model_shape(model)
    seq = budget.seq_len(first_batch)
    flops = budget.flops_per_token(n_params, n_layers, d_model, seq)
    peak = budget.peak_flops(cfg.peak_tflops, accelerator.device)
    cost = {"flops_per_token": flops, "peak_flops": peak, "memory_estimate_mb": None,
            "model_shape": (n_params, n_layers, d_model)}  # before sharding
    if hasattr(model, "config") and seq:
        rows = first_batch["input_ids"].numel() // seq  # sequences in a global micro-batch (pairs count twice)
        sharded = accelerator.distributed_type == DistributedType.FSDP and world > 1
        act_bytes = 2 if accelerator.mixed_precision in ("bf16", "fp16") else 4
        mem = budget.memory_estimate(model, -(-rows // world), seq, world, sharded, act_bytes)
        cost["memory_estimate_mb"] = round(mem["total"] / 2**20, 1)
        log.info("budget: %.2fM active params, %.3g FLOPs/token at %d tokens; memory per rank ~%.0f MB (params %.0f, "
                 "grads %.0f, optimizer %.0f, activations %.0f); MFU %s", n_params / 1e6, flops, seq,
                 *(mem[k] / 2**20 for k in ("total", "params", "grads", "optimizer", "activations")),
                 f"against {peak:.3g} FLOP/s per rank" if peak else "not reported (peak FLOP/s unknown: set peak_tflops)")
    return cost


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in backward; non-reentrant, so it composes with FSDP and frozen inputs."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        raise ValueError(f"gradient_checkpointing=true needs a Hugging Face model; got {type(model).__name__}")
    model.config.use_cache = False  # a KV cache is useless in training and incompatible with recomputation


# --- the pieces of one step, in the order train() uses them -------------------------------------

CHECKPOINTED = ("train", "guard")  # state.json's parts besides Accelerate's files


def resume(ckpt_dir: Path, accelerator: Accelerator, guard: SpikeGuard) -> TrainState:
    """The latest checkpoint's state (model, optimizer, RNG and the guard restored in place), or a fresh one."""
    last = checkpoint.latest(ckpt_dir)
    if last is None:
        return TrainState()
    saved = checkpoint.load(last, accelerator, CHECKPOINTED)
    guard.load_state_dict(saved["guard"])
    state = TrainState.from_state_dict(saved["train"])
    log.info("resumed from step %d (%.1f s trained before)", state.step, state.train_seconds)
    return state


def save_checkpoint(ckpt_dir: Path, accelerator: Accelerator, state: TrainState, guard: SpikeGuard, keep: int) -> None:
    checkpoint.save(ckpt_dir, accelerator, state.step, {"train": state.state_dict(), "guard": guard.state_dict()}, keep)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, accelerator: Accelerator,
                  max_norm: float, step: int = 0) -> float:
    """Clip the gradients, update (and the adapter's own step: AdaLoRA's rank pruning), clear; return the
    gradient norm before clipping."""
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2: a DTensor
    optimizer.step()
    adapters.after_update(accelerator.unwrap_model(model), step)
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def skip_update(verdict: str, loss: float, state: TrainState, guard: SpikeGuard, ckpt_dir: Path,
                accelerator: Accelerator, steps_log: StepLog) -> TrainState:
    """The spike guard refused the update: drop it, and after too many in a row roll back."""
    log.warning("step %d: loss %.4g (running average %s): update skipped", state.step + 1, loss, guard.loss_avg)
    if verdict == SKIP:
        state.step += 1  # the data of a skipped step is not retried
        return state
    last = checkpoint.latest(ckpt_dir)
    if last is None or guard.rollbacks >= MAX_ROLLBACKS:
        raise RuntimeError(f"{guard.in_a_row} loss spikes in a row at step {state.step + 1} after "
                           f"{guard.rollbacks} rollbacks ({'no checkpoint' if last is None else last.name}): "
                           "lower the learning rate or inspect the data")
    # the guard keeps its counters and average (checkpoint.load only restores in place what Accelerate saved)
    back = TrainState.from_state_dict(checkpoint.load(last, accelerator, CHECKPOINTED)["train"])
    # resume past the batches that spiked (PaLM's remedy): the same data would spike again
    back.data_offset = state.data_offset + state.step + 1 - back.step
    back.train_seconds = state.train_seconds  # the time spent on the abandoned steps was spent
    guard.rolled_back()
    steps_log.truncate(back.step)
    log.warning("rolled back to %s; skipping %d batches of data", last.name, back.data_offset)
    return back


def validate(model: torch.nn.Module, evaluate: Callable[[torch.nn.Module], dict], accelerator: Accelerator,
             step: int) -> dict:
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        metrics = evaluate(model)
    log.info("step %d validation %s", step, {k: round(v, 4) for k, v in metrics.items() if k.startswith("val")})
    return metrics


def log_progress(row: dict, cfg: TrainConfig) -> None:
    log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s%s", row["step"], cfg.max_steps, row["loss"], row["lr"],
             row["tokens_per_s"], f" MFU {row['mfu']:.1%}" if "mfu" in row else "")


def summarize(final: dict, state: TrainState, guard: SpikeGuard, cost: dict, clock: Clock, model: torch.nn.Module,
              accelerator: Accelerator, strategy: str) -> dict:
    """The run's metrics; counters and rates over the whole run, across restarts (TrainState)."""
    world, seconds = accelerator.num_processes, max(1e-9, state.train_seconds)
    tokens_per_second = state.tokens / seconds
    return {
        "final_loss": final.get("loss", float("nan")),
        "steps": state.step,
        "skipped_steps": guard.skipped,
        "rollbacks": guard.rollbacks,
        "tokens_trained": state.tokens,
        "train_seconds": round(state.train_seconds, 2),
        "first_step_seconds": round(clock.first_step_seconds or 0.0, 2),
        "tokens_per_second": round(tokens_per_second, 1),
        "flops_per_token": cost["flops_per_token"],
        "memory_estimate_mb": cost["memory_estimate_mb"],
        **({"mfu": float(f'{budget.mfu(tokens_per_second, cost["flops_per_token"], world, cost["peak_flops"]):.4g}')}
           if cost["peak_flops"] else {}),  # 4 significant digits: a tiny model's MFU is below 1e-4
        "world_size": world,
        "strategy": strategy,
        "precision": accelerator.mixed_precision,  # as resolved on this machine (bf16 falls back to fp32 on some CPUs)
        "device": accelerator.device.type,
        "param_share_per_rank": round(local_parameter_share(model), 4),
        **{k: v for k, v in final.items() if k.startswith("val")},
    }


def prepare(model: torch.nn.Module, cfg: TrainConfig, first_batch: dict, accelerator: Accelerator):
    """(model, optimizer, forward, cost): the model wrapped by Accelerate, forward its compiled wrapper
    where cfg.compile (same parameters), and the budget, logged."""
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    cost = announce_budget(model, cfg, first_batch, accelerator)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, cfg))
    return model, optimizer, compiling.training_forward(model, cfg, accelerator), cost


def finish(accelerator: Accelerator, model: torch.nn.Module, export: tuple[Any, Path] | None) -> None:
    """Export the model. The checkpoints stay: artifacts.build() removes them once the artifact is renamed in
    place, so a kill before that resumes instead of restarting from step 0."""
    if export is not None:
        save_model(accelerator, model, export[0], export[1])
    accelerator.wait_for_everyone()


def train(model: torch.nn.Module, cfg: TrainConfig, batch_fn: BatchFn, loss_fn: LossFn, out_dir: Path,
          evaluate: Callable[[torch.nn.Module], dict] | None = None, accelerator: Accelerator | None = None,
          export: tuple[Any, Path] | None = None, ctx: StageContext | None = None) -> dict:
    """Train in place; write out_dir/log.jsonl and checkpoints; return the final metrics. batch_fn(step, micro)
    gives the global micro-batch (the same on every rank); each rank trains on its shard. export=(tokenizer,
    path) saves the trained model there. A checkpoint in out_dir is resumed: model, optimizer, RNG, data
    position, spike guard, counters; log.jsonl cut to its step. ctx: the stage's (strategy, wandb run name)."""
    ctx = ctx or StageContext.local(out_dir, stage="train")
    accelerator = accelerator or make_accelerator(cfg, model, ctx.strategy)
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    model, optimizer, forward, cost = prepare(model, cfg, batch_fn(0, 0), accelerator)
    out_dir, ckpt_dir = Path(out_dir), Path(out_dir) / "checkpoints"
    guard = SpikeGuard(factor=cfg.spike_factor, max_in_a_row=cfg.max_spikes_in_a_row)
    state = resume(ckpt_dir, accelerator, guard)
    attention_before = compiling.attention_for_compile(model, cfg, accelerator)  # restored in `finally`
    steps_log, final = StepLog(out_dir / "log.jsonl", state.step, enabled=main), {}
    clock, meter = Clock(), budget.Throughput(cost["model_shape"], cost["peak_flops"], world)
    tracker = tracking.start(ctx, cfg) if main else tracking.Tracker()
    try:
        while state.step < cfg.max_steps:
            # --- one optimizer step over cfg.grad_accum micro-batches ---
            lr = set_lr(optimizer, lr_at(state.step, cfg))
            batches = [shard(batch_fn(state.step + state.data_offset, micro), rank, world) for micro in range(cfg.grad_accum)]
            forward.train()  # the compiled wrapper's flag too, which loss functions read
            loss_total, n_targets, extras = accumulate_gradients(forward, batches, loss_fn, accelerator)
            loss = loss_total / max(1, n_targets)
            verdict = guard.observe(loss)  # a non-finite or far-above-average loss skips the update
            if verdict != ACCEPT:
                optimizer.zero_grad(set_to_none=True)
                state = skip_update(verdict, loss, state, guard, ckpt_dir, accelerator, steps_log)
                clock.tick(state, updated=False)
                continue
            grad_norm = clip_and_step(model, optimizer, accelerator, cfg.grad_clip, state.step)
            state.step, state.tokens = state.step + 1, state.tokens + meter.add(batches)
            clock.tick(state)
            # --- logging, validation, checkpoints ---
            row = {"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": state.tokens, **extras}
            done = state.step == cfg.max_steps
            if (state.step - 1) % cfg.log_every == 0 or done:
                row.update(meter.read())
                log_progress(row, cfg)
            if evaluate is not None and (done or (cfg.eval_every and state.step % cfg.eval_every == 0)):
                row.update(validate(model, evaluate, accelerator, state.step))
            steps_log.write(row)
            tracker.log(row, row["step"])
            if state.step % cfg.save_every == 0 and not done:
                save_checkpoint(ckpt_dir, accelerator, state, guard, cfg.keep_checkpoints)
            final = row
        finish(accelerator, model, export)
        clock.tick(state, updated=False)  # the last validation and the export count too
    except BaseException:
        tracker.fail()
        raise
    finally:
        steps_log.close()
        if attention_before is not None:
            accelerator.unwrap_model(model).set_attn_implementation(attention_before)
    metrics = summarize(final, state, guard, cost, clock, model, accelerator, ctx.strategy)
    tracker.finish(metrics, model_dir=export[1] if export is not None else None)
    return metrics
