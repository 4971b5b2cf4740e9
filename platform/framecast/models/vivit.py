"""ViViT (Arnab et al. 2021) for next-frame prediction: a baseline of the V-BLT paper (table 1-2).

    pixels (B, T, H, W, C) --tubelet embedding (pt, ph, pw)--> tokens (B, S, P, D)
    --> L factorised blocks: spatial attention inside each time slice, then temporal attention
    across slices at the same (y, x), causal in time; an MLP --> the tokens of slice s,
    un-embedded per pixel, predict every byte of slice s + 1 (256-way, V-BLT's head and loss).

Which ViViT: model 3, factorised self-attention. Model 2 (factorised encoder) pools each frame to
one token before the temporal transformer, which leaves nothing to decode pixels from; model 1
(joint attention under a block-causal mask) is V-BLT's global transformer with a linear decoder,
so comparing it with V-BLT would test little. Factorised attention keeps a token per tubelet and
costs O(S * P^2 + P * S^2) instead of O((S * P)^2). Positions: 3D RoPE (shared with V-BLT) in
place of ViViT's learned embeddings, so one model reads any frame size.

Causality: the tubelet embedding never mixes slices, spatial attention stays inside a slice and
temporal attention is causal, so the logits of slice s + 1 depend only on slices <= s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from framecast.config import ConfigError
from framecast.distribution import DEFAULT_DECODE
from framecast.models.contract import FramePredictor, check_patched_video
from framecast.models.layers import (
    MLP,
    Attention,
    block_causal_mask,
    check_rope_heads,
    grid_positions,
    init_weights,
    rope_3d_angles,
)
from framecast.models.registry import register_model


@dataclass(frozen=True)
class ViViTConfig:
    tubelet: tuple[int, int, int] = (2, 4, 4)  # (pt, ph, pw): ViViT's tubelet embedding
    channels: int = 1
    decode: str = DEFAULT_DECODE  # pixel distribution -> byte (distribution.DECODES); set on val
    dim: int = 192
    heads: int = 4  # per-head width dim / heads must be a multiple of 6 (3D RoPE)
    layers: int = 4
    mlp_ratio: float = 4.0
    pixel_dim: int = 32  # per-pixel width a tubelet token is un-embedded to before the head
    dropout: float = 0.0
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        check_rope_heads(self.dim, self.heads)
        if len(self.tubelet) != 3 or min(self.tubelet) < 1:
            raise ValueError(f"tubelet={self.tubelet} must be three positive sizes (pt, ph, pw)")
        if self.layers < 1 or self.pixel_dim < 1:
            raise ValueError(f"layers={self.layers} and pixel_dim={self.pixel_dim} must be >= 1")

    def for_data(self, frame_shape: tuple[int, int, int, int]) -> ViViTConfig:
        """This config for videos of frame_shape (T, H, W, C): the data's channels; refused when
        the tubelet does not tile the frames or leaves fewer than two time slices."""
        t, h, w, c = frame_shape
        pt, ph, pw = self.tubelet
        if t % pt or h % ph or w % pw or t < 2 * pt:
            raise ConfigError(f"tubelet {pt}x{ph}x{pw} does not tile the data's {t}x{h}x{w} "
                              "frames (T, H, W must be multiples of it, with at least two time "
                              "slices)")
        return replace(self, channels=c)


class FactorisedBlock(nn.Module):
    """ViViT model 3: pre-norm spatial attention, temporal attention (causal), then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm_space = nn.LayerNorm(dim)
        self.space = Attention(dim, heads, dropout=dropout)
        self.norm_time = nn.LayerNorm(dim)
        self.time = Attention(dim, heads, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, space_angles: torch.Tensor, time_angles: torch.Tensor,
                time_mask: torch.Tensor) -> torch.Tensor:
        """x (B, S, P, D) -> (B, S, P, D)."""
        b, s, p, d = x.shape
        y = x.reshape(b * s, p, d)  # one sequence per time slice
        y = y + self.space(self.norm_space(y), space_angles)
        y = y.view(b, s, p, d).transpose(1, 2).reshape(b * p, s, d)  # one per (y, x) position
        y = y + self.time(self.norm_time(y), time_angles, mask=time_mask)
        y = y.view(b, p, s, d).transpose(1, 2)  # (B, S, P, D)
        return y + self.mlp(self.norm_mlp(y))


class ViViT(FramePredictor):
    """forward(uint8 video (B, T, H, W, C)) -> logits (B, T - pt, H, W, C, 256) for every frame
    after the first time slice; the logits of a frame depend only on earlier slices."""

    config_class = ViViTConfig

    def __init__(self, cfg: ViViTConfig) -> None:
        super().__init__(cfg)
        # stride = kernel: a patch convolution, which quantization turns into an int8 GEMM.
        self.embed = nn.Conv3d(cfg.channels, cfg.dim, cfg.tubelet, stride=cfg.tubelet)
        self.blocks = nn.ModuleList(FactorisedBlock(cfg.dim, cfg.heads, cfg.mlp_ratio,
                                                    cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.unembed = nn.ConvTranspose3d(cfg.dim, cfg.pixel_dim, cfg.tubelet, stride=cfg.tubelet)
        self.pixel_norm = nn.LayerNorm(cfg.pixel_dim)
        self.head = nn.Linear(cfg.pixel_dim, cfg.channels * self.levels)
        init_weights(self)

    @property
    def context_frames(self) -> int:
        """The first time slice is given."""
        return self.cfg.tubelet[0]

    @property
    def frames_per_step(self) -> int:
        """A forward step predicts one time slice."""
        return self.cfg.tubelet[0]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        check_patched_video(video, self.cfg.tubelet, self.cfg.channels, "tubelet")
        b, t, h, w, c = video.shape
        pt, ph, pw = self.cfg.tubelet
        s, hp, wp = t // pt, h // ph, w // pw
        head_dim = self.cfg.dim // self.cfg.heads
        space_angles = rope_3d_angles(grid_positions(1, hp, wp, video.device), head_dim,
                                      self.cfg.rope_base)  # (P, hd/2)
        time_angles = rope_3d_angles(grid_positions(s, 1, 1, video.device), head_dim,
                                     self.cfg.rope_base)  # (S, hd/2)
        time_mask = block_causal_mask(s, 1, video.device)  # (S, S) lower triangular
        x = video.permute(0, 4, 1, 2, 3).to(self.compute_dtype) / 127.5 - 1.0  # in [-1, 1]
        x = self.embed(x)  # (B, D, S, Hp, Wp)
        x = x.flatten(3).permute(0, 2, 3, 1)  # (B, S, P, D)
        for block in self.blocks:
            x = block(x, space_angles, time_angles, time_mask)
        x = self.norm(x[:, :-1])  # slices 0..S-2 predict slices 1..S-1: (B, S-1, P, D)
        grid = x.permute(0, 3, 1, 2).reshape(b, -1, s - 1, hp, wp)  # (B, D, S-1, Hp, Wp)
        pixels = self.unembed(grid)  # (B, pd, T-pt, H, W): each token paints its own tubelet
        logits = self.head(self.pixel_norm(pixels.permute(0, 2, 3, 4, 1)))  # (B, T-pt, H, W, C*V)
        return logits.view(b, t - pt, h, w, c, self.levels)


VIVIT_PRESETS = {
    # The V-BLT paper's table 1 model (6.5 MB, 59.3 GFLOPs per 12x64x64 sequence): here 6.01 MB
    # (fp32) and 61.4 GFLOPs (a multiply-add = 2, attention counted). At 6.5 MB the tubelet
    # sets the compute: 4x4x4 gives ~3.5 GFLOPs, 2x4x4 ~6.5, 2x2x2 ~30-40, 1x2x2 (12288
    # tokens) 60-80, so 1x2x2 tubelets and 2 factorised blocks of width 216.
    "paper": {"tubelet": (1, 2, 2), "dim": 216, "heads": 6, "layers": 2, "pixel_dim": 64},
    # CPU: V-BLT `small`'s time slice (2x4x4) and about its size.
    "small": {"tubelet": (2, 4, 4), "dim": 96, "heads": 4, "layers": 4, "pixel_dim": 32},
    # Seconds: for tests.
    "tiny": {"tubelet": (2, 4, 4), "dim": 24, "heads": 2, "layers": 1, "mlp_ratio": 2.0,
             "pixel_dim": 12},
}

register_model("vivit", VIVIT_PRESETS)(ViViT)
