"""Per-matrix sensitivity (VQ-ViT): S(W) = (||W||_2 / ||W||_F) * E[ ||dL/dW||_F ].

The first factor is large for weights dominated by one direction (low effective rank), the second
for weights the loss reacts to strongly; both make a matrix risky to quantize.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight matrix of every nn.Linear, by module name: what W8A8 quantizes. Layers of the
    model's components (a generator's tokenizer) are left out: they stay as trained."""
    parts = tuple(f"{attr}." for attr in getattr(model, "components", dict)())
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not name.startswith(parts)}


def spectral_ratio(weight: torch.Tensor) -> float:
    """||W||_2 / ||W||_F, in (0, 1]: 1 for a rank-one matrix."""
    w = weight.detach().float()
    return float(torch.linalg.matrix_norm(w, ord=2) / torch.linalg.matrix_norm(w, ord="fro"))


def weight_sensitivity(model: nn.Module, batches: Iterable[torch.Tensor],
                       loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]
                       ) -> dict[str, float]:
    """S(W) per linear weight over the calibration batches (the expectation is their mean)."""
    weights = linear_weights(model)
    grad_norms = {name: 0.0 for name in weights}
    count = 0
    was_training = model.training
    model.eval()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        for name, w in weights.items():
            if w.grad is not None:
                grad_norms[name] += float(w.grad.detach().float().norm())
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count == 0:
        raise ValueError("sensitivity needs at least one calibration batch")
    return {name: spectral_ratio(w) * grad_norms[name] / count for name, w in weights.items()}
