"""The training loop, plain PyTorch, for any model of the contract (`models.contract`): each
step minimises `model.loss(batch)`, so the loop knows no vocabulary, channel count or grid.

Ray Train runs `train_loop` on every worker; the loop knows nothing of Ray or MLflow. It calls
`report(metrics, checkpoint_dir)`: the job passes a function that reports to Ray Train and MLflow,
tests pass `lambda m, c: seen.append(m)`.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

Report = Callable[[dict[str, float], str | None], None]


@dataclass(frozen=True)
class OptimConfig:
    steps: int = field(default=300, metadata={"help": "optimizer steps in total"})
    batch_size: int = field(default=8, metadata={"help": "sequences per step and worker"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (AdamW)"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final lr / peak lr (cosine)"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0 = off)"})
    log_every: int = field(default=10, metadata={"help": "steps between loss reports"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints"})
    own_inputs: float = field(default=0.0, metadata={
        "help": "frame predictors: fraction of each clip's predicted frames replaced by the "
                "model's own predictions before the loss (scheduled sampling: trains on inputs "
                "like a rollout's); 0 = teacher forcing"})


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up to the peak, then cosine decay to min_lr_ratio * peak at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cached_epochs(epoch_batches: Callable[[int], Iterable[torch.Tensor]], *, batch_size: int,
                  seed: int, limit_bytes: int) -> Iterator[torch.Tensor]:
    """Batches, epoch after epoch, for as many steps as the caller takes.

    The first epoch streams `epoch_batches(0)` and keeps the batches it yields; when they stay
    within `limit_bytes`, every later epoch reshuffles the kept rows in memory (a permutation
    seeded by `seed + epoch`) and cuts them into batches of `batch_size`, dropping the last
    partial one. A streaming source would re-read its data every epoch, which on a CPU can
    cost more than the training step itself. A larger data set streams
    `epoch_batches(epoch)` every epoch, as before. Every epoch yields as many batches as the
    first, so data-parallel workers stay in step."""
    kept: list[torch.Tensor] | None = []
    size = 0
    for batch in epoch_batches(0):
        if kept is not None:
            size += batch.numel() * batch.element_size()
            if size <= limit_bytes:  # a copy: the batch may view Ray's object store (pinned)
                kept.append(batch.clone())
            else:
                kept = None
        yield batch
    if kept is not None and not kept:
        raise ValueError("the first epoch yielded no batch: no data to train on")
    rows = torch.cat(kept) if kept is not None else None
    for epoch in itertools.count(1):
        if rows is None:
            yield from epoch_batches(epoch)
            continue
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(rows) - batch_size + 1, batch_size):
            yield rows[order[start:start + batch_size]]


class Objective(nn.Module):
    """`forward(batch) = model.loss(batch)` (with `own_inputs`, a frame predictor's scheduled
    sampling, when > 0). Wrap a model in this *before* DistributedDataParallel: DDP
    synchronises gradients only through its own forward, so the loss must be what that forward
    computes."""

    def __init__(self, model: nn.Module, own_inputs: float = 0.0) -> None:
        super().__init__()
        self.module = model
        self.own_inputs = own_inputs

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if self.own_inputs > 0:
            return self.module.loss(batch, own_inputs=self.own_inputs)
        return self.module.loss(batch)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and `Objective` wrappers, if any."""
    while isinstance(model, Objective) or (
            hasattr(model, "module") and isinstance(model.module, nn.Module)):
        model = model.module
    return model


def objective(model: nn.Module, own_inputs: float = 0.0) -> nn.Module:
    """`model` if it already computes the loss (an Objective, maybe inside DDP), else
    Objective(model, own_inputs)."""
    inner = getattr(model, "module", None)
    return model if isinstance(model, Objective) or isinstance(inner, Objective) else \
        Objective(model, own_inputs)


def batch_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The model's own training loss on one batch (for calibration and sensitivity)."""
    return unwrap(model).loss(batch)[0]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings (1-D or embedding tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def save_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    step: int) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(unwrap(model).state_dict(), directory / "model.pt")
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps({"step": step}))


def load_checkpoint(directory: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore weights (and optimizer state); returns the step to continue from. Tensors only:
    `weights_only=True` never runs code from the file."""
    directory = Path(directory)
    unwrap(model).load_state_dict(
        torch.load(directory / "model.pt", map_location="cpu", weights_only=True))
    if optimizer is not None:
        optimizer.load_state_dict(
            torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True))
    return int(json.loads((directory / "state.json").read_text())["step"])


def train_loop(model: nn.Module, optimizer: torch.optim.Optimizer,
               batches: Iterator[torch.Tensor], cfg: OptimConfig, report: Report, *,
               start_step: int = 0, device: torch.device | None = None,
               bf16: bool = False, is_chief: bool = True,
               evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
               eval_every: int = 0) -> int:
    """Train from `start_step` to `cfg.steps`; returns the final step.

    Every `log_every` steps: report({'step', 'loss', 'lr', and the means of the extra metrics
    of `model.loss`}, None). Every `checkpoint_every` steps and at the end: save a checkpoint
    (chief only) and report it. Every `eval_every` steps the chief adds `evaluate(model)` to
    that report. `model` may come wrapped by DDP (around an `Objective`, see there).
    """
    device = device or torch.device("cpu")
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16
                else nullcontext())
    step_loss = objective(model, cfg.own_inputs)
    model.train()
    running, count, extra = 0.0, 0, {}
    step = start_step
    while step < cfg.steps:
        video = next(batches).to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast:
            loss, more = step_loss(video)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        running += loss.item()
        count += 1
        for key, value in more.items():
            extra[key] = extra.get(key, 0.0) + float(value)
        last = step == cfg.steps
        want_ckpt = last or step % cfg.checkpoint_every == 0
        want_eval = evaluate is not None and eval_every > 0 and (last or step % eval_every == 0)
        if not (want_ckpt or want_eval or step % cfg.log_every == 0):
            continue
        metrics = {"step": float(step), "loss": running / count, "lr": lr_at(step - 1, cfg),
                   **{k: v / count for k, v in extra.items()}}
        running, count, extra = 0.0, 0, {}
        if want_eval and is_chief:
            model.eval()
            metrics.update(evaluate(unwrap(model)))
            model.train()
        if want_ckpt:
            with tempfile.TemporaryDirectory() as tmp:
                if is_chief:
                    save_checkpoint(tmp, model, optimizer, step)
                report(metrics, tmp if is_chief else None)
        else:
            report(metrics, None)
    return step
