"""UNet-3D (Cicek et al. 2016) for next-frame prediction: a baseline of the V-BLT paper.

    pixels (B, T, H, W, C) --> encoder: per level two 3x3x3 convolutions (norm, ReLU), then a
    2x2 max-pool in space --> bottleneck --> decoder: 2x2 up-convolution, concatenate the
    encoder's features of that level (the skip), two 3x3x3 convolutions --> per pixel and frame t
    a 256-way distribution over the bytes of frame t + 1 (V-BLT's head and loss).

Causal in time: every convolution is padded on the left in time only (kernel_t - 1 frames), so
the features of frame t see frames <= t; pooling and up-convolutions act in space only (a
temporal down-sampling would need its own alignment to stay causal, and 12 frames leave little
to pool). Normalisation is per frame (GroupNorm over channels and space of one frame): the
paper's BatchNorm, or a GroupNorm over time, would let future frames shift past activations.
Frames whose height or width is not a multiple of 2^depth are zero-padded, then cropped back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from framecast.distribution import DEFAULT_DECODE
from framecast.models.contract import FramePredictor
from framecast.models.layers import conv3d, init_weights
from framecast.models.registry import register_model


@dataclass(frozen=True)
class UNet3DConfig:
    channels: int = 1
    decode: str = DEFAULT_DECODE  # pixel distribution -> byte (distribution.DECODES); set on val
    width: int = 32  # channels of the first level; each level down doubles it
    depth: int = 3  # spatial 2x down-samplings (levels below the first)
    kernel_t: int = 3  # temporal kernel: each convolution looks back kernel_t - 1 frames
    groups: int = 8  # GroupNorm groups (at most; a divisor of each level's width is used)
    # Channels stop doubling at this width (0: every level doubles): the deep levels hold most
    # parameters and few FLOPs, so a cap trades size for compute per pixel.
    max_width: int = 0

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1 or self.kernel_t < 1 or self.groups < 1:
            raise ValueError(f"width={self.width}, depth={self.depth}, kernel_t="
                             f"{self.kernel_t} and groups={self.groups} must all be >= 1")
        if self.max_width and self.max_width < self.width:
            raise ValueError(f"max_width={self.max_width} must be 0 (no cap) or >= width="
                             f"{self.width}")

    @property
    def widths(self) -> list[int]:
        """Channels of each level, the first to the bottleneck."""
        return [min(self.width * 2 ** i, self.max_width or self.width * 2 ** i)
                for i in range(self.depth + 1)]

    def for_data(self, frame_shape: tuple[int, int, int, int]) -> UNet3DConfig:
        """This config for videos of frame_shape (T, H, W, C): the data's channels (any frame
        size is read: odd sizes are padded)."""
        return replace(self, channels=frame_shape[3])


class CausalConv3d(nn.Conv3d):
    """A (kt, 3, 3) convolution padded kt - 1 frames on the left in time, 1 pixel in space."""

    def __init__(self, cin: int, cout: int, kernel_t: int) -> None:
        super().__init__(cin, cout, (kernel_t, 3, 3))
        self.left = kernel_t - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1, self.left, 0))  # (W, W, H, H, T, T)
        return conv3d(x, self.weight, self.bias)  # oneDNN for a float32 batch of one too


class FrameNorm(nn.GroupNorm):
    """GroupNorm over the channels and pixels of each frame alone (never across time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.view(b, t, c, h, w).transpose(1, 2)


class ConvBlock(nn.Module):
    """Two causal 3x3x3 convolutions, each followed by a per-frame norm and ReLU."""

    def __init__(self, cin: int, cout: int, cfg: UNet3DConfig) -> None:
        super().__init__()
        groups = math.gcd(cout, cfg.groups)
        self.conv1 = CausalConv3d(cin, cout, cfg.kernel_t)
        self.norm1 = FrameNorm(groups, cout)
        self.conv2 = CausalConv3d(cout, cout, cfg.kernel_t)
        self.norm2 = FrameNorm(groups, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class UNet3D(FramePredictor):
    """forward(uint8 video (B, T, H, W, C)) -> logits (B, T - 1, H, W, C, 256): frame t + 1
    predicted from frames <= t."""

    config_class = UNet3DConfig

    def __init__(self, cfg: UNet3DConfig) -> None:
        super().__init__(cfg)
        widths = cfg.widths  # last: the bottleneck
        self.down = nn.ModuleList(ConvBlock(cin, cout, cfg) for cin, cout in
                                  zip([cfg.channels, *widths[:-2]], widths[:-1], strict=True))
        self.bottleneck = ConvBlock(widths[-2], widths[-1], cfg)
        # Up-convolutions (stride = kernel, space only): quantization runs them as int8 GEMMs.
        self.up = nn.ModuleList(nn.ConvTranspose3d(widths[i + 1], widths[i], (1, 2, 2),
                                                   stride=(1, 2, 2))
                                for i in reversed(range(cfg.depth)))
        self.fuse = nn.ModuleList(ConvBlock(2 * widths[i], widths[i], cfg)
                                  for i in reversed(range(cfg.depth)))
        self.head = nn.Linear(cfg.width, cfg.channels * self.levels)
        init_weights(self)
        for m in self.modules():  # ReLU convolutions: He init, not GPT's 0.02
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    @property
    def context_frames(self) -> int:
        """The first frame is given."""
        return 1

    @property
    def frames_per_step(self) -> int:
        return 1

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = video.shape
        if c != self.cfg.channels:
            raise ValueError(f"video has {c} channels, the model {self.cfg.channels}")
        if t < 2:
            raise ValueError(f"video has {t} frames; predicting needs at least 2")
        unit = 2 ** self.cfg.depth
        x = video.permute(0, 4, 1, 2, 3).to(self.compute_dtype) / 127.5 - 1.0  # in [-1, 1]
        x = F.pad(x, (0, -w % unit, 0, -h % unit))  # H, W up to multiples of 2^depth
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool3d(x, (1, 2, 2))
        x = self.bottleneck(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips), strict=True):
            x = fuse(torch.cat([up(x), skip], dim=1))
        x = x[:, :, :-1, :h, :w].permute(0, 2, 3, 4, 1)  # frames 0..T-2 -> (B, T-1, H, W, width)
        return self.head(x).view(b, t - 1, h, w, c, self.levels)


UNET3D_PRESETS = {
    # The V-BLT paper's table 1 model (24.0 MB, 70.4 GFLOPs per 12x64x64 sequence): widths
    # 42-84-168-168 over 3 down-samplings, 23.7 MB (fp32) and 65.2 GFLOPs (a multiply-add = 2).
    # Doubling at every level cannot give both (depth 3 does 1.92-1.97 GFLOPs per MB, depth 2
    # 5.5-5.6, table 1 2.9): the cap at 4x the first width does (benchmarks/RESULTS.md, paper
    # presets). Before: width 34, depth 3, no cap (23.4 MB, 46.0 GFLOPs).
    "paper": {"width": 42, "depth": 3, "max_width": 168},
    # CPU: about V-BLT `small`'s size.
    "small": {"width": 12, "depth": 3, "groups": 4},
    # Seconds: for tests.
    "tiny": {"width": 12, "depth": 2, "groups": 4},
}

register_model("unet3d", UNET3D_PRESETS)(UNet3D)
