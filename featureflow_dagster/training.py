"""Causal-LM training (AdamW, warm-up + cosine) with resumable checkpoints, and evaluation.

Batch order is a pure function of (seed, step): step s takes positions [s*B, (s+1)*B) of the
concatenation of per-epoch permutations, each drawn from a generator seeded with (seed, epoch).
A run killed after a checkpoint therefore resumes onto exactly the batches it would have seen.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from featureflow_dagster.lineage import TrainingSpec
from featureflow_dagster.storage import atomic_file


@dataclass
class TrainResult:
    steps: int
    tokens_seen: int
    seconds: float
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean train loss over the log window)
    resumed_from_step: int = 0


def lr_factor(step: int, spec: TrainingSpec, total_steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio` at `total_steps`."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = min(1.0, (step - spec.warmup_steps) / max(1, total_steps - spec.warmup_steps))
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def total_steps_for(n_blocks: int, spec: TrainingSpec) -> int:
    if spec.max_steps is not None:
        return spec.max_steps
    return max(1, math.ceil(spec.epochs * n_blocks / spec.batch_size))


def batch_indices(step: int, n_blocks: int, batch_size: int, seed: int) -> torch.Tensor:
    """Row indices of the blocks in batch `step` (see the module docstring)."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // n_blocks
    out = torch.empty(batch_size, dtype=torch.long)
    for e in epochs.unique().tolist():
        perm = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))
        mask = epochs == e
        out[mask] = perm[positions[mask] % n_blocks]
    return out


def _autocast(device: torch.device, dtype: str):
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def run_fingerprint(spec: TrainingSpec, seed: int, data_hash: str, init_hash: str) -> str:
    payload = f"{spec.model_dump_json()}|{seed}|{data_hash}|{init_hash}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_causal_lm(
    model: torch.nn.Module,
    blocks: torch.Tensor,
    spec: TrainingSpec,
    seed: int,
    device: torch.device,
    checkpoint_path: Path | None = None,
    fingerprint: str = "",
    log: Callable[[str], None] | None = None,
    stop_after_step: int | None = None,
) -> TrainResult:
    """Train `model` in place on `blocks` (int [n_blocks, n_ctx]) with the autoregressive loss.

    Checkpoints (model, optimizer, schedule position, loss curve) go to `checkpoint_path` every
    `spec.checkpoint_every` steps; a checkpoint with the same `fingerprint` is resumed from.
    `stop_after_step` ends the run early after that step's checkpoint logic (used to test resuming)."""
    model.to(device).train()
    n_blocks = blocks.shape[0]
    if n_blocks == 0:
        raise ValueError("no training blocks: the data is shorter than one n_ctx block; add data or lower n_ctx")
    total = total_steps_for(n_blocks, spec)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(spec.beta1, spec.beta2),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, spec, total))
    start, curve = 0, []
    if checkpoint_path is not None and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, curve = int(state["step"]), [tuple(x) for x in state["loss_curve"]]
            if log:
                log(f"resuming from checkpoint {checkpoint_path} at step {start}/{total}")
        elif log:
            log(f"ignoring checkpoint {checkpoint_path}: it belongs to a different configuration")
    log_every = max(1, total // 50)
    window: list[float] = []
    done = start
    t0 = time.perf_counter()
    bar = tqdm(range(start, total), initial=start, total=total, desc="train", unit="step", disable=None)
    for step in bar:
        idx = batch_indices(step, n_blocks, spec.batch_size, seed)
        x = blocks[idx].to(device, torch.long)
        with _autocast(device, spec.dtype):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        sched.step()
        window.append(float(loss.detach()))
        done = step + 1
        if done % log_every == 0 or done == total:
            curve.append((done, sum(window) / len(window)))
            window = []
            bar.set_postfix(loss=f"{curve[-1][1]:.3f}")
            if log:
                log(f"step {done}/{total} loss {curve[-1][1]:.4f} lr {sched.get_last_lr()[0]:.2e}")
        if checkpoint_path is not None and done % spec.checkpoint_every == 0 and done < total:
            _atomic_torch_save(
                {
                    "fingerprint": fingerprint,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": done,
                    "loss_curve": curve,
                },
                checkpoint_path,
            )
        if stop_after_step is not None and done >= stop_after_step:
            break
    bar.close()
    steps_done = done
    return TrainResult(
        steps=steps_done,
        tokens_seen=steps_done * spec.batch_size * blocks.shape[1],
        seconds=time.perf_counter() - t0,
        loss_curve=curve,
        resumed_from_step=start,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) and accuracy over all predicted positions of `blocks`."""
    if blocks.shape[0] == 0:
        raise ValueError("no validation blocks to evaluate on; raise validation_tokens or validation_fraction")
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, blocks.shape[0], batch_size):
        x = blocks[start : start + batch_size].to(device, torch.long)
        logits = model(input_ids=x).logits.float()
        pred, target = logits[:, :-1], x[:, 1:]
        total_loss += float(torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="sum"))
        correct += int((pred.argmax(-1) == target).sum())
        count += target.numel()
    model.train(was_training)
    return {"loss": total_loss / count, "accuracy": correct / count, "tokens": count}


@dataclass
class NodeTraining:
    model: torch.nn.Module
    result: TrainResult
    evaluation: dict[str, dict[str, float]]  # domain -> {loss, accuracy, tokens}
    init_weights_hash: str
    start_evaluation: dict[str, dict[str, float]]  # the same metrics before training


def train_lineage_node(
    model: torch.nn.Module,
    train_blocks: dict[str, torch.Tensor],
    validation_blocks: dict[str, torch.Tensor],
    spec: TrainingSpec,
    seed: int,
    device: torch.device,
    checkpoint_path: Path | None = None,
    data_hash: str = "",
    log: Callable[[str], None] | None = None,
) -> NodeTraining:
    """Train a lineage node's model (fresh for a base, its parent's weights for a fine-tune) on the
    union of its sources' blocks, and evaluate it on each domain's own validation blocks."""
    from featureflow_dagster.model import weights_hash

    init_hash = weights_hash(model)
    model.to(device)
    before = {d: evaluate(model, b, spec.eval_batch_size, device) for d, b in validation_blocks.items()}
    blocks = torch.cat([train_blocks[name] for name in sorted(train_blocks)])
    result = train_causal_lm(
        model, blocks, spec, seed, device,
        checkpoint_path=checkpoint_path,
        fingerprint=run_fingerprint(spec, seed, data_hash, init_hash),
        log=log,
    )
    after = {d: evaluate(model, b, spec.eval_batch_size, device) for d, b in validation_blocks.items()}
    if checkpoint_path is not None:
        checkpoint_path.unlink(missing_ok=True)
    return NodeTraining(model, result, after, init_hash, before)
