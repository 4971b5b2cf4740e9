"""A convolutional video autoencoder with Finite Scalar Quantization (the NBP tokenizer's
quantizer, the NBP paper, arXiv 2502.07737; FSQ itself: Mentzer et al. 2023, arXiv 2309.15505).

    uint8 video (B, T, H, W, C) -> frames (B*T, C, H, W) in [-1, 1] -> encoder: conv, then per
    halving a stage of residual blocks and a stride-2 conv -> latent (B*T, D, H/f, W/f) -> FSQ:
    a linear map to len(levels) dims, each bounded and rounded to its own number of levels ->
    token = mixed-radix index of the rounded vector, in [0, prod(levels)) -> decoder (mirror:
    nearest upsampling + conv per doubling) -> frames.

The quantizer is `vector_quantize_pytorch.FSQ` (the maintained one: straight-through rounding,
index <-> code maps); nothing of it is rewritten here. No codebook is learnt, so there is no
commitment loss and no dead codes to revive: the loss is the reconstruction alone.

Frames are encoded one by one with 2D convolutions (the paper's tokenizer is a causal 3D CNN):
with no temporal downsampling (T' = T) the tokens of frame t then depend on frame t alone, so a
generator's context tokens never carry information from frames it has to predict, and a growing
video is tokenized frame by frame. The price is no temporal redundancy shared across frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framecast import metrics
from framecast.config import ConfigError
from framecast.models.contract import Metrics, Tokenizer
from framecast.models.registry import register_model


@dataclass(frozen=True)
class FSQConfig:
    channels: int = 1
    levels: tuple[int, int, int, int] = (8, 5, 5, 5)  # 1000 codes (FSQ paper's choice for ~2^10)
    downsample: int = 8  # spatial factor f (a power of two): an H x W frame -> H/f x W/f tokens
    width: int = 64  # channels of the full-resolution stage; doubled per halving ...
    max_width: int = 256  # ... up to this
    res_blocks: int = 2  # residual blocks per stage (encoder and decoder each)
    latent_dim: int = 256  # encoder output / decoder input width around the FSQ projection
    l1_weight: float = 0.0  # loss = MSE + l1_weight * L1, both on the [0, 1] pixel scale

    def __post_init__(self) -> None:
        f = self.downsample
        if f < 1 or f & (f - 1):
            raise ValueError(f"downsample={f} must be a power of two (1, 2, 4, 8, ...)")
        if min(self.levels) < 3:
            raise ValueError(f"levels={self.levels}: every level must be at least 3 (FSQ "
                             "needs its symmetry-preserving variant for 2)")
        if min(self.width, self.max_width, self.latent_dim, self.res_blocks + 1) < 1:
            raise ValueError("width, max_width and latent_dim must be positive, res_blocks >= 0")

    @property
    def stage_widths(self) -> list[int]:
        """Channels of each resolution, full resolution first (one more entry than halvings)."""
        stages = int(math.log2(self.downsample)) + 1
        return [min(self.width * 2 ** i, self.max_width) for i in range(stages)]

    def for_data(self, frame_shape: tuple[int, int, int, int]) -> FSQConfig:
        """This config for videos of frame_shape (T, H, W, C): the data's channels; refused
        when the downsampling factor does not divide the frames."""
        _, h, w, c = frame_shape
        if h % self.downsample or w % self.downsample:
            raise ConfigError(f"downsample={self.downsample} does not divide the data's {h}x{w} "
                              f"frames (H and W must be multiples of it)")
        return replace(self, channels=c)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus the input (a 1x1 conv when the width changes)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  _norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Encoder(nn.Module):
    """Frames (N, C, H, W) in [-1, 1] -> latents (N, latent_dim, H/f, W/f)."""

    def __init__(self, cfg: FSQConfig) -> None:
        super().__init__()
        widths = cfg.stage_widths
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            layers += [ResBlock(width, width) for _ in range(cfg.res_blocks)]
            if i + 1 < len(widths):
                layers.append(nn.Conv2d(width, widths[i + 1], 4, stride=2, padding=1))
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cfg.latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


class Decoder(nn.Module):
    """Quantized latents (N, latent_dim, H/f, W/f) -> frames (N, C, H, W), about [-1, 1]
    (unbounded: a tanh would slow learning of the saturated black and white pixels)."""

    def __init__(self, cfg: FSQConfig) -> None:
        super().__init__()
        widths = cfg.stage_widths[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            layers += [ResBlock(width, width) for _ in range(cfg.res_blocks)]
            if i + 1 < len(widths):
                # Nearest upsampling + conv rather than a transposed conv: no checkerboard.
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(width, widths[i + 1], 3, padding=1)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], cfg.channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


class FSQTokenizer(Tokenizer):
    """uint8 video (B, T, H, W, C) <-> tokens (B, T, H/f, W/f) in [0, prod(levels))."""

    frame_independent = True  # 2D convolutions frame by frame, T' = T

    config_class = FSQConfig
    headline = ("psnr", "ssim")

    def __init__(self, cfg: FSQConfig) -> None:
        super().__init__(cfg)
        self.encoder = Encoder(cfg)
        # FSQ's own projections map latent_dim <-> len(levels) around the rounding. Imported here:
        # frame predictors (and compare_gpu.py on a bare GPU machine) never need the package.
        from vector_quantize_pytorch import FSQ

        self.quantizer = FSQ(levels=list(cfg.levels), dim=cfg.latent_dim)
        self.decoder = Decoder(cfg)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.cfg.levels)

    def grid(self, frame_shape: tuple[int, int, int, int]) -> tuple[int, int, int]:
        t, h, w, _ = frame_shape
        f = self.cfg.downsample
        return t, h // f, w // f

    def _frames(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, C) -> float frames (B*T, C, H, W) in [-1, 1]."""
        b, t, h, w, c = video.shape
        f = self.cfg.downsample
        if h % f or w % f:
            raise ValueError(f"frames {h}x{w} are not divisible by downsample={f}")
        if c != self.cfg.channels:
            raise ValueError(f"video has {c} channels, the tokenizer {self.cfg.channels}")
        x = video.reshape(b * t, h, w, c).permute(0, 3, 1, 2)  # (B*T, C, H, W)
        return x.float() / 127.5 - 1.0

    def _quantize(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (quantized latents (B*T, D, H', W'), int64 tokens (B, T, H', W'))."""
        latents, tokens = self.quantizer(self.encoder(self._frames(video)))
        return latents, tokens.long().view(video.shape[0], video.shape[1], *tokens.shape[1:])

    def _unit(self, latents: torch.Tensor, b: int) -> torch.Tensor:
        """Quantized latents (B*T, D, H', W') -> video (B, T, H, W, C) on the [0, 1] scale."""
        x = (self.decoder(latents) + 1.0) / 2.0  # (B*T, C, H, W)
        _, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, -1, h, w, c)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """The training reconstruction: float (B, T, H, W, C) on the [0, 1] scale (unclamped),
        with straight-through gradients through the rounding."""
        latents, _ = self._quantize(video)
        return self._unit(latents, video.shape[0])

    def loss(self, video: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """MSE (+ l1_weight * L1) on the [0, 1] scale; `psnr` is the batch's, from its MSE."""
        recon = self(video).float()
        target = video.float() / 255.0
        mse = F.mse_loss(recon, target)
        loss = mse + self.cfg.l1_weight * F.l1_loss(recon, target) if self.cfg.l1_weight else mse
        psnr = 10.0 * math.log10(1.0 / max(mse.item(), 1e-10))
        return loss, {"psnr": psnr}

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self._quantize(video)[1]

    def codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """int tokens (...) -> FSQ code vectors (..., len(levels)), each entry on its level's
        grid in [-1, 1] (what a generator may embed instead of a learnt table)."""
        return self.quantizer.implicit_codebook[tokens.long()]

    def tokens_of(self, codes: torch.Tensor) -> torch.Tensor:
        """FSQ code vectors (..., len(levels)) -> int64 tokens (...); inverse of `codes`."""
        return self.quantizer.codes_to_indices(codes).long()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t, hq, wq = tokens.shape
        if tokens.min() < 0 or tokens.max() >= self.codebook_size:
            raise ValueError(f"tokens must lie in [0, {self.codebook_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        latents = self.quantizer.indices_to_codes(tokens.reshape(b * t, hq, wq))  # (B*T, D, H', W')
        unit = self._unit(latents, b)
        return (unit * 255.0).round().clamp(0, 255).to(torch.uint8)

    @torch.no_grad()
    def reconstruct(self, videos: np.ndarray, batch_size: int = 8
                    ) -> tuple[np.ndarray, np.ndarray, float]:
        """uint8 videos (N, T, H, W, C) -> (uint8 reconstructions through the tokens, the
        tokens (N, T', H', W'), the mean training loss)."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        recons, tokens, losses = [], [], []
        for i in range(0, len(videos), batch_size):
            video = torch.as_tensor(videos[i:i + batch_size]).to(device)
            latents, toks = self._quantize(video)
            unit = self._unit(latents, video.shape[0]).float()
            target = video.float() / 255.0
            loss = F.mse_loss(unit, target)
            if self.cfg.l1_weight:
                loss = loss + self.cfg.l1_weight * F.l1_loss(unit, target)
            losses.append(loss.item() * len(video))
            recons.append((unit * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
            tokens.append(toks.cpu().numpy())
        self.train(was_training)
        return np.concatenate(recons), np.concatenate(tokens), sum(losses) / len(videos)

    def evaluate(self, videos: np.ndarray, batch_size: int = 8) -> Metrics:
        """Reconstruction loss, MSE / PSNR / SSIM of the uint8 reconstructions (per frame, then
        averaged), and codebook usage: the fraction of codes used and the perplexity of the
        tokens' empirical distribution (codebook_size at most; higher = codes used evenly)."""
        recon, tokens, loss = self.reconstruct(videos, batch_size)
        counts = np.bincount(tokens.ravel(), minlength=self.codebook_size)
        p = counts[counts > 0] / counts.sum()
        return {"loss": loss, **metrics.summary(metrics.frame_metrics(recon, videos)),
                "code_usage": float((counts > 0).mean()),
                "perplexity": float(np.exp(-(p * np.log(p)).sum()))}

    def quality(self, videos: np.ndarray, batch_size: int = 8) -> float:
        """Mean reconstruction PSNR (dB) through the tokens."""
        recon, _, _ = self.reconstruct(videos, batch_size)
        return float(metrics.psnr_per_frame(recon, videos).mean())

    def figure(self, video: np.ndarray, title: str = "") -> bytes | None:
        """PNG: the truth row above the reconstruction row, a column per frame."""
        from framecast import viz

        recon, _, _ = self.reconstruct(video[None])
        psnr = float(metrics.psnr_per_frame(recon, video[None]).mean())
        plt = viz._pyplot()
        frames = video.shape[0]
        fig, axes = plt.subplots(2, frames, figsize=(1.2 * frames + 1.0, 2.8), squeeze=False)
        for j in range(frames):
            for row, img in enumerate((video[j], recon[0, j])):
                ax = axes[row, j]
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray",
                          vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[0, j].set_title(f"t={j}", fontsize=8)
        axes[0, 0].set_ylabel("truth", fontsize=8)
        axes[1, 0].set_ylabel("reconstruction", fontsize=8)
        grid = "x".join(map(str, self.grid(video.shape)))
        fig.suptitle(f"{title + ': ' if title else ''}{grid} tokens of {self.codebook_size}, "
                     f"PSNR {psnr:.1f} dB", fontsize=9)
        return viz._png(fig)


FSQ_PRESETS = {
    # The target: 12 frames of 64x64 -> 12 x 8 x 8 = 768 tokens of 1000 (GPU).
    "paper": {},
    # 32x32 frames -> 8x8 tokens: sized to train on 2 CPU cores (its PSNR per step count is in
    # benchmarks/RESULTS.md).
    "small": {"downsample": 4, "width": 16, "max_width": 64, "res_blocks": 1, "latent_dim": 64},
    # Seconds: for tests.
    "tiny": {"downsample": 4, "width": 8, "max_width": 16, "res_blocks": 1, "latent_dim": 16},
}

register_model("fsq", FSQ_PRESETS)(FSQTokenizer)
