"""What a model costs: parameters, size in MB and forward GFLOPs per sequence."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, flop_registry


def _attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """Forward attention as dense compute: Q K^T and P V, 2 FLOPs per multiply-add. A mask
    (boolean or additive, e.g. block-causal) skips no work in this count; query heads may be a
    multiple of key/value heads (grouped-query attention)."""
    b, heads, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * heads * lq * lk * (d + dv)


def _attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                              **kwargs) -> int:
    """Backward attention, as torch counts its CUDA kernels': Q K^T again, dO V^T, P^T dO,
    dS K and Q^T dS."""
    b, heads, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * heads * lq * lk * (3 * d + 2 * dv)


# Fused scaled-dot-product-attention kernels that torch's FLOP counter has no formula for (torch
# 2.13 counts CUDA's flash, memory-efficient and cuDNN kernels, and the math fall-back through
# its matmuls): the CPU flash kernel, which F.scaled_dot_product_attention runs on a CPU with or
# without a mask and for cross-attention; the kernel other accelerators (XPU, PrivateUse1)
# override; the MPS math kernel. Each op's first tensors are (query, key, value) in forward and
# (grad_out, query, key, value) in backward, (B, heads, L, d) each.
_FORWARD = ("_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_fused_attention_overrideable",
            "_scaled_dot_product_attention_math_for_mps")
_BACKWARD = ("_scaled_dot_product_flash_attention_for_cpu_backward",
             "_scaled_dot_product_fused_attention_overrideable_backward")


def _mkldnn_conv_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's convolution, called directly by `layers.conv3d` for a float32 batch of one on
    a CPU: counted as torch counts F.conv3d."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def _attention_mapping() -> dict:
    """Formulas for the attention ops above, and oneDNN's convolution, that this torch has and
    its counter lacks: passed to each FlopCounterMode, so importing framecast changes no global
    registry."""
    mapping = {}
    for names, formula in ((_FORWARD, _attention_flops), (_BACKWARD, _attention_backward_flops),
                           (("mkldnn_convolution",), _mkldnn_conv_flops)):
        for name in names:
            if hasattr(torch.ops.aten, name):
                op = getattr(torch.ops.aten, name)
                if op not in flop_registry:
                    mapping[op] = formula
    return mapping


ATTENTION_FLOP_FORMULAS = _attention_mapping()


@torch.no_grad()
def count_flops(module: nn.Module, *inputs: torch.Tensor, **kwargs: Any) -> int:
    """FLOPs of one forward pass `module(*inputs, **kwargs)`, a multiply-add counting 2, by torch's
    FLOP counter with formulas for the attention kernels it misses (ATTENTION_FLOP_FORMULAS).

    Counted: matrix products (linears, matmuls), convolutions and transposed convolutions, and
    scaled-dot-product attention on every kernel: 2 * B * heads * Lq * Lk * (d + dv) for Q K^T
    and P V, dense, whatever the mask (a block-causal mask skips no FLOPs here). Not counted:
    bias adds, softmax, norms, activations, RoPE rotations, embedding look-ups and pooling (as
    in the papers' tables)."""
    return flops_by_module(module, *inputs, **kwargs)["Global"]


@torch.no_grad()
def flops_by_module(module: nn.Module, *inputs: torch.Tensor, **kwargs: Any) -> dict[str, int]:
    """`count_flops`, split by submodule: {"Global": all, "<Class>.<path>": that module's}, as
    torch's counter names them (e.g. "VBLT.blocks.0" for V-BLT's first global block)."""
    counter = FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS)
    with counter:
        module(*inputs, **kwargs)
    counts = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    counts.setdefault("Global", int(counter.get_total_flops()))
    return counts


def model_cost(model: nn.Module, frames: int, size: int, channels: int = 1, width: int = 0,
               videos: np.ndarray | None = None) -> dict[str, float]:
    """Parameters, MB of its weights (fp32: 4 bytes each; MiB) and forward GFLOPs for one
    (frames, size, width or size) uint8 sequence, counted by `count_flops` on the model's device
    (a model built under `torch.device("meta")` is counted without weights or compute). A model
    whose compute depends on the content (dynamic patching) is counted on `videos` (N, T, H, W,
    C), one sequence at a time, and the mean reported; without them, on a black sequence."""
    params = sum(p.numel() for p in model.parameters())
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if videos is None:
        videos = np.zeros((1, frames, size, width or size, channels), np.uint8)
    model.eval()
    gflops = np.mean([count_flops(model, torch.from_numpy(np.ascontiguousarray(v[None])).to(
        device)) for v in videos]) / 1e9
    return {"params": params, "mb": megabytes, "gflops": float(gflops)}
