"""Building blocks shared by the video transformers: block-causal masks, 3D RoPE, attention.

Token layout everywhere: a video of S time slices with P tokens each is unrolled slice by slice
into a sequence of S * P tokens; `grid_positions` gives each token its (t, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def block_causal_mask(num_blocks: int, block_size: int, device: torch.device | None = None
                      ) -> torch.Tensor:
    """Boolean (L, L) mask, L = num_blocks * block_size, True where attention is allowed:
    full inside a block, causal across blocks (V-BLT figure 4; NBP's block-wise mask)."""
    block = torch.arange(num_blocks * block_size, device=device) // block_size  # (L,)
    return block[:, None] >= block[None, :]


@dataclass(frozen=True)
class BlockCausal:
    """`block_causal_mask(num_blocks, block_size)` given by its shape: `Attention` then computes
    each query block against the keys of its own and earlier blocks only, skipping the
    (num_blocks - 1) / (2 num_blocks) of the scores the dense mask would discard and the mask
    itself (about 1.5x faster on a CPU for 5 blocks of 64 tokens: benchmarks/RESULTS.md, issue
    31). The same outputs; inference paths use it (`VBLT.next_step_logits`), while `forward`
    keeps the dense mask, so its FLOP count stays the dense one the comparisons report."""
    num_blocks: int
    block_size: int


def block_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int,
                           dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v under a block-causal mask, one query block at a time against
    its key prefix: q, k, v (B, nh, L, hd), L a multiple of block_size."""
    return torch.cat([F.scaled_dot_product_attention(
        q[:, :, start:start + block_size], k[:, :, :start + block_size],
        v[:, :, :start + block_size], dropout_p=dropout_p)
        for start in range(0, q.shape[2], block_size)], dim=2)


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           padding: tuple[int, int, int] = (0, 0, 0)) -> torch.Tensor:
    """F.conv3d(x, weight, bias, padding=padding), stride 1. A float32 batch of one on a CPU
    outside autograd runs on oneDNN's kernel: torch 2.13 sends that case of F.conv3d (and only
    that one: batches of 2 or more, and bf16, get oneDNN's) to its slow reference kernel, 5-6x
    slower (V-BLT `small`'s 32-channel pixel convolution over 10x32x32: 5.1-5.8 ms against
    0.8-0.9; benchmarks/RESULTS.md, issue 31)."""
    if (x.shape[0] == 1 and x.dtype == torch.float32 and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and torch.backends.mkldnn.is_available()):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), [1, 1, 1],
                                                 [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, padding=padding)


class FrameConv(nn.Conv3d):
    """nn.Conv3d(cin, cout, (1, kh, kw)) with "same" padding, computed by `conv3d`: the same
    parameters and state dict as the Conv3d (models saved with one load into the other)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int] = (3, 3)
                 ) -> None:
        kh, kw = kernel
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel {kernel}: odd sizes only (a 'same' convolution)")
        super().__init__(in_channels, out_channels, (1, kh, kw), padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3d(x, self.weight, self.bias, self.padding)


def grid_positions(t: int, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(t * h * w, 3) float positions (t, y, x) in row-major (slice, row, column) order."""
    tt, yy, xx = torch.meshgrid(torch.arange(t, device=device), torch.arange(h, device=device),
                                torch.arange(w, device=device), indexing="ij")
    return torch.stack([tt, yy, xx], dim=-1).reshape(-1, 3).float()


def check_rope_heads(dim: int, heads: int, name: str = "dim") -> None:
    """Refuse (ValueError) a width that 3D RoPE cannot split: `dim / heads` must be a whole
    per-head width that is a multiple of 6 (its pairs form three groups: t, y, x)."""
    if heads < 1 or dim % heads or (dim // heads) % 6:
        raise ValueError(f"{name}={dim} / heads={heads} must give a per-head width that is a "
                         "multiple of 6 (3D RoPE splits it over t, y, x)")


def rope_3d_angles(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angle of every complex pair, (L, dim / 2), for positions (L, 3) = (t, y, x).

    V-BLT eq. (1)-(4): the dim/2 pairs form three groups of dim/6, one per axis; pair k of a
    group turns by pos_axis * w_k with w_k = base^(-6k/dim), k = 1..dim/6.
    """
    if dim % 6:
        raise ValueError(f"3D RoPE needs a dimension divisible by 6, got {dim}")
    sixth = dim // 6
    k = torch.arange(1, sixth + 1, device=positions.device, dtype=torch.float32)
    freqs = base ** (-6.0 * k / dim)  # (dim/6,)
    angles = positions.float()[:, :, None] * freqs[None, None, :]  # (L, 3, dim/6)
    return angles.reshape(positions.shape[0], 3 * sixth)  # groups t | y | x


def rope_rotations(angles: torch.Tensor) -> torch.Tensor:
    """Angles (L, dim / 2) -> unit complex rotations e^{i theta}, which `apply_rope` takes as
    they are: a caller that applies the same angles many times (a generator's steps, every
    layer) computes them once."""
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x_2m, x_2m+1) of x (..., L, dim) by angles (L, dim / 2), real,
    or by their rotations (complex, `rope_rotations`): eq. (5), each pair times e^{i theta}.
    One complex product (about 10x faster on a CPU than the same sums in real arithmetic), except
    under ONNX export, which has no complex tensors."""
    x_pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (..., L, dim/2, 2)
    if torch.onnx.is_in_onnx_export():
        cos, sin = ((angles.real, angles.imag) if angles.is_complex()
                    else (angles.cos(), angles.sin()))
        real = x_pairs[..., 0] * cos - x_pairs[..., 1] * sin
        imag = x_pairs[..., 0] * sin + x_pairs[..., 1] * cos
        return torch.stack([real, imag], dim=-1).flatten(-2).type_as(x)
    rotations = angles if angles.is_complex() else rope_rotations(angles)
    if any(stride % 2 for stride in x_pairs.stride()[:-2]):  # view_as_complex needs even strides
        x_pairs = x_pairs.contiguous()
    return torch.view_as_real(torch.view_as_complex(x_pairs) * rotations).flatten(-2).type_as(x)


class MLP(nn.Module):
    quant_roles = {"fc": "mlp", "proj": "mlp"}  # the role of each linear in VQ-ViT's schedule

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Attention(nn.Module):
    """Multi-head attention with 3D RoPE on queries and keys; cross-attention when given a
    context."""

    quant_roles = {"q": "qkv", "kv": "qkv", "out": "attn_out"}

    def __init__(self, dim: int, heads: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        check_rope_heads(dim, heads)
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, N, hd)

    def forward(self, x: torch.Tensor, q_angles: torch.Tensor, *,
                context: torch.Tensor | None = None, kv_angles: torch.Tensor | None = None,
                mask: torch.Tensor | BlockCausal | None = None) -> torch.Tensor:
        """x (B, N, D) queries; context (B, M, D) keys/values (x itself when None);
        angles (N or M, head_dim / 2); mask (N, M) bool, True = may attend, or a `BlockCausal`
        (self-attention over the whole sequence)."""
        context = x if context is None else context
        kv_angles = q_angles if kv_angles is None else kv_angles
        q = apply_rope(self._split(self.q(x)), q_angles)
        k, v = self.kv(context).chunk(2, dim=-1)
        k = apply_rope(self._split(k), kv_angles)
        dropout_p = self.dropout if self.training else 0.0
        if isinstance(mask, BlockCausal):
            y = block_causal_attention(q, k, self._split(v), mask.block_size, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, self._split(v), attn_mask=mask,
                                               dropout_p=dropout_p)  # (B, nh, N, hd)
        return self.out(y.transpose(1, 2).reshape(x.shape))


class Block(nn.Module):
    """Pre-norm transformer block: (masked) self-attention, then an MLP."""

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float = 4.0, dropout: float = 0.0
                 ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, angles: torch.Tensor,
                mask: torch.Tensor | BlockCausal | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), angles, mask=mask)
        return x + self.mlp(self.norm2(x))

    def last_tokens(self, x: torch.Tensor, angles: torch.Tensor, n: int) -> torch.Tensor:
        """`forward(x, angles, mask)[:, -n:]` where the last n tokens may attend to every token
        (the last block of a block-causal mask): (B, n, D), their queries and MLP only."""
        h = self.norm1(x)
        y = x[:, -n:] + self.attn(h[:, -n:], angles[..., -n:, :], context=h, kv_angles=angles)
        return y + self.mlp(self.norm2(y))


def init_weights(module: nn.Module) -> None:
    """GPT-style init: small normal weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d, nn.ConvTranspose3d, nn.Conv2d)):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
