"""The one training loop behind pretrain, sft and align.

An objective differs only through `loss_fn(model, batch) -> (loss_sum, metrics)`.
Batches come from `batch_fn(step, micro)`, a pure function of the position, so a
resumed run continues on exactly the data it would have seen, without replay.
Each batch carries "n_targets" (tokens, or pairs for DPO): the loss is normalised by
the targets of the whole accumulated batch, so accumulation 4 x 2 equals batch 8.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType

from components.context import StageContext
from components.train import budget, checkpoint, compiling, device, lora, tracking
from components.train.config import TrainConfig

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


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
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
        # Accelerate silently falls back to DDP on CPU (STACK-NOTES); FSDP2 itself works there on gloo
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
    for batch in batches:
        batch = device.to_device(batch, accelerator.device)
        with accelerator.autocast():
            loss_sum, metrics = loss_fn(model, batch)
        accelerator.backward(loss_sum * (world / max(1, n_targets)))
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
    return local / max(1, sum(p.numel() for p in model.parameters()))


def save_model(accelerator: Accelerator, model: torch.nn.Module, tokenizer, path: Path) -> None:
    """A plain Hugging Face directory, gathered from every rank (collective: all ranks call it).
    A LoRA model is merged in place first: call it once training is over."""
    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # gathered onto rank 0's CPU (our checkpoints stay sharded; the export is one plain file)
        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.distributed_type == DistributedType.FSDP:
            # save_pretrained inspects the module's own (sharded) parameters, a collective the
            # other ranks never join: save an unsharded copy instead
            unwrapped = lora.blank_like(unwrapped)
            unwrapped.load_state_dict(state_dict)
            state_dict = None  # the copy's own, so tied weights are recognised as one
        if lora.is_adapted(unwrapped):  # LoRA: adapters merged into the weights, a plain HF model
            unwrapped, state_dict = lora.merged(unwrapped), None
        unwrapped.save_pretrained(path, state_dict=state_dict)
        tokenizer.save_pretrained(path)
    accelerator.wait_for_everyone()


def seq_len(batch: dict) -> int:
    return int(batch["input_ids"].shape[-1]) if "input_ids" in batch else 0


def announce_budget(model: torch.nn.Module, cfg: TrainConfig, first_batch: dict, accelerator: Accelerator) -> dict:
    """Log and return FLOPs per token, the per-rank memory estimate and the device's peak FLOP/s."""
    world = accelerator.num_processes
    n_params, n_layers, d_model = budget.model_shape(model)
    seq = seq_len(first_batch)
    flops = budget.flops_per_token(n_params, n_layers, d_model, seq)
    peak = budget.peak_flops(cfg.peak_tflops, accelerator.device)
    cost = {"flops_per_token": flops, "peak_flops": peak, "memory_estimate_mb": None}
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


def truncate_log(log_path: Path, step: int) -> None:
    """Drop log rows after `step` (a resume or rollback redoes them)."""
    if log_path.exists():
        rows = [r for r in log_path.read_text().splitlines() if json.loads(r)["step"] <= step]
        log_path.write_text("".join(r + "\n" for r in rows))


def train(
    model: torch.nn.Module,
    cfg: TrainConfig,
    batch_fn: BatchFn,
    loss_fn: LossFn,
    out_dir: Path,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    accelerator: Accelerator | None = None,
    export: tuple[Any, Path] | None = None,
    ctx: StageContext | None = None,
) -> dict:
    """Train in place; write out_dir/log.jsonl and checkpoints; return the final metrics.

    batch_fn(step, micro) gives the global micro-batch (the same on every rank); each rank
    trains on its shard. export=(tokenizer, path) saves the trained model there. ctx: the stage's
    context (strategy, wandb run name); by default a local one writing into out_dir.
    """
    ctx = ctx or StageContext.local(out_dir, stage="train")
    accelerator = accelerator or make_accelerator(cfg, model, ctx.strategy)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    shape = budget.model_shape(model)  # before sharding
    cost = announce_budget(model, cfg, batch_fn(0, 0), accelerator)
    optimizer = make_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    forward = compiling.training_forward(model, cfg, accelerator)  # the model, or its compiled wrapper (same parameters)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    ckpt_dir = Path(out_dir) / "checkpoints"
    log_path = Path(out_dir) / "log.jsonl"
    # data_offset: batches skipped after a rollback, so training does not replay the window that spiked
    state = {"step": 0, "tokens": 0, "skipped_steps": 0, "rollbacks": 0, "data_offset": 0}
    if checkpoint.latest(ckpt_dir) is not None:
        state = {**state, **checkpoint.load(checkpoint.latest(ckpt_dir), accelerator)}
        log.info("resumed from step %d", state["step"])
        if main:
            truncate_log(log_path, state["step"])
    final: dict = {}
    loss_avg, spikes_in_a_row, accepted = None, 0, 0
    started, window_tokens, window_flops, window_start = time.time(), 0, 0.0, time.time()
    first_step_seconds = None  # compile's one-off cost shows here
    log_file = open(log_path, "a") if main else None
    tracker = tracking.start(ctx, cfg) if main else tracking.Tracker()
    attention_before = None
    try:
        attention_before = compiling.attention_for_compile(model, cfg, accelerator)
        while state["step"] < cfg.max_steps:
            step = state["step"]
            # --- one optimizer step over cfg.grad_accum micro-batches ---
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = [shard(batch_fn(step + state["data_offset"], micro), rank, world) for micro in range(cfg.grad_accum)]
            forward.train()  # the compiled wrapper's flag too, which loss functions read
            loss_total, n_targets, extras = accumulate_gradients(forward, batches, loss_fn, accelerator)
            loss = loss_total / max(1, n_targets)
            # --- loss-spike guard: a non-finite or far-above-average loss skips the update ---
            warm = accepted >= 10  # a running average worth comparing against
            if not math.isfinite(loss) or (cfg.spike_factor and warm and loss > cfg.spike_factor * loss_avg):
                optimizer.zero_grad(set_to_none=True)
                state["skipped_steps"] += 1
                spikes_in_a_row += 1
                log.warning("step %d: loss %.4g (running average %s): update skipped", step + 1, loss, loss_avg)
                if spikes_in_a_row >= cfg.max_spikes_in_a_row:
                    last = checkpoint.latest(ckpt_dir)
                    if last is None or state["rollbacks"] >= MAX_ROLLBACKS:
                        raise RuntimeError(f"{spikes_in_a_row} loss spikes in a row at step {step + 1} after "
                                           f"{state['rollbacks']} rollbacks ({'no checkpoint' if last is None else last.name}): "
                                           "lower the learning rate or inspect the data")
                    kept = {k: state[k] for k in ("skipped_steps", "rollbacks", "data_offset")}
                    state = {**state, **checkpoint.load(last, accelerator), **kept}
                    # resume past the batches that spiked (PaLM's remedy): the same data would spike again
                    state["data_offset"] += step + 1 - state["step"]
                    state["rollbacks"] += 1
                    spikes_in_a_row = 0
                    if log_file:
                        log_file.close()
                        truncate_log(log_path, state["step"])
                        log_file = open(log_path, "a")
                    log.warning("rolled back to %s; skipping %d batches of data", last.name, state["data_offset"])
                else:
                    state["step"] += 1  # the data of a skipped step is not retried
                continue
            spikes_in_a_row, accepted = 0, accepted + 1
            loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_tokens = sum(int(b.get("n_tokens", b["n_targets"])) for b in batches)
            state = {**state, "step": step + 1, "tokens": state["tokens"] + step_tokens}
            if first_step_seconds is None:
                first_step_seconds = time.time() - started
                log.info("first step: %.1f s%s", first_step_seconds,
                         " (torch.compile: tracing and code generation, once per run)" if cfg.compile else "")
            window_tokens += step_tokens
            window_flops += sum(int(b.get("n_tokens", b["n_targets"])) * budget.flops_per_token(*shape, seq_len(b))
                                for b in batches)
            # --- logging, validation, checkpoints ---
            row = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                   "tokens": state["tokens"], **extras}
            done = state["step"] == cfg.max_steps
            if step % cfg.log_every == 0 or done:
                now = time.time()
                row["tokens_per_s"] = window_tokens / max(1e-9, now - window_start)
                if cost["peak_flops"]:
                    row["mfu"] = window_flops / max(1e-9, now - window_start) / (cost["peak_flops"] * world)
                window_tokens, window_flops, window_start = 0, 0.0, now
                log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s%s", row["step"], cfg.max_steps,
                         row["loss"], lr, row["tokens_per_s"], f" MFU {row['mfu']:.1%}" if "mfu" in row else "")
            if evaluate is not None and (done or (cfg.eval_every and state["step"] % cfg.eval_every == 0)):
                model.eval()
                with torch.no_grad(), accelerator.autocast():
                    row.update(evaluate(model))
                log.info("step %d validation %s", state["step"], {k: round(v, 4) for k, v in row.items() if k.startswith("val")})
            if log_file:
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
            tracker.log(row, row["step"])
            if state["step"] % cfg.save_every == 0 and not done:
                checkpoint.save(ckpt_dir, accelerator, state, cfg.keep_checkpoints)
            final = row
        if export is not None:
            save_model(accelerator, model, export[0], export[1])
        accelerator.wait_for_everyone()
        if main:  # finished: resuming is no longer needed (a failed build keeps them, see artifacts.py)
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    except BaseException:
        tracker.fail()
        raise
    finally:
        if log_file:
            log_file.close()
        if attention_before is not None:
            accelerator.unwrap_model(model).set_attn_implementation(attention_before)
    seconds = time.time() - started
    metrics = {
        "final_loss": final.get("loss", float("nan")),
        "steps": state["step"],
        "skipped_steps": state["skipped_steps"],
        "rollbacks": state["rollbacks"],
        "tokens_trained": state["tokens"],
        "train_seconds": round(seconds, 2),
        "first_step_seconds": round(first_step_seconds or 0.0, 2),
        "tokens_per_second": round(state["tokens"] / max(1e-9, seconds), 1),
        "flops_per_token": cost["flops_per_token"],
        "memory_estimate_mb": cost["memory_estimate_mb"],
        **({"mfu": float(f'{budget.mfu(state["tokens"] / max(1e-9, seconds), cost["flops_per_token"], world, cost["peak_flops"]):.4g}')}
           if cost["peak_flops"] else {}),  # 4 significant digits: a tiny model's MFU is below 1e-4
        "world_size": world,
        "strategy": ctx.strategy,
        "precision": accelerator.mixed_precision,  # as resolved on this machine (bf16 falls back to fp32 on some CPUs)
        "device": accelerator.device.type,
        "param_share_per_rank": round(local_parameter_share(model), 4),
        **{k: v for k, v in final.items() if k.startswith("val")},
    }
    tracker.finish(metrics)
    return metrics
