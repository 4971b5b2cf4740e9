"""V-BLT: the Vision Byte Latent Transformer (the V-BLT paper).

Raw pixel bytes in, a 256-way distribution per predicted pixel byte out; no tokenizer.

    bytes (B, T, H, W, C) --embed--> local encoder: per-frame conv, patch conv (pt, ph, pw),
    shallow block-causal transformer --> one latent per patch --> global transformer (block-
    causal: full inside a time slice, causal across slices; 3D RoPE) --> local decoder: the
    latents of slice s, upsampled by a transposed conv and refined by cross-attention to all
    latents of slice s, predict every byte of slice s + 1.

Causality: the encoder's convolutions never mix frames of different slices and every attention
is block-causal, so the logits for slice s + 1 depend only on slices <= s.

Beyond the paper (its future work): `patching="entropy"` cuts each slice by a quadtree over a
menu of patch sizes where a tiny causal entropy model is uncertain (models/patching.py), so the
global transformer runs on fewer latents where the video is predictable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framecast.config import ConfigError
from framecast.distribution import DEFAULT_DECODE
from framecast.models.contract import FramePredictor, check_patched_video
from framecast.models.layers import (
    MLP,
    Attention,
    Block,
    BlockCausal,
    FrameConv,
    block_causal_mask,
    check_rope_heads,
    grid_positions,
    init_weights,
    rope_3d_angles,
)
from framecast.models.patching import (
    MAX_BITS,
    EntropyModel,
    Layout,
    menu,
    pack,
    packed_mask,
    quadtree,
    unpack,
)


@dataclass(frozen=True)
class VBLTConfig:
    patch: tuple[int, int, int] = (4, 4, 4)  # (pt, ph, pw): a static spatio-temporal patch
    channels: int = 1
    decode: str = DEFAULT_DECODE  # pixel distribution -> byte (distribution.DECODES); set on val
    byte_dim: int = 16  # embedding width of one byte
    conv_dim: int = 64  # local encoder's per-frame convolution width
    dim: int = 384  # latent width (paper: 384)
    heads: int = 8  # per-head width dim / heads must be a multiple of 6 (3D RoPE)
    encoder_layers: int = 1  # shallow transformer blocks in the local encoder
    global_layers: int = 6
    decoder_dim: int = 96  # per-pixel width in the local decoder
    decoder_heads: int = 4
    decoder_layers: int = 1
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    rope_base: float = 10000.0
    # Beyond the paper (as BLT's local decoder reads the encoder's byte states): each pixel query
    # of slice s + 1 also gets that pixel's per-frame encoder states in slice s. Off = the paper
    # (and models saved before the option existed).
    byte_skip: bool = False
    # With byte_skip: logits start as "the same byte as in the last frame of slice s" with this
    # many nats of confidence (a learned 256x256 table per byte value); 0 = no such prior.
    copy_prior: float = 0.0
    # The paper's local decoder restores resolution with transposed convolutions; ours paints each
    # patch with its own latent (kernel = stride = patch), so no pixel state sees its neighbours.
    # decoder_convs > 0 adds that many residual per-frame 3x3 convolution blocks over the pixel
    # states of the predicted slice, after the cross-attention (causal: they mix pixels of one
    # predicted slice, whose states come from earlier slices only). 0 = as before.
    decoder_convs: int = 0
    # The paper's local encoder aggregates with "a few convolution layers"; ours has one 3x3
    # per-frame convolution. encoder_convs > 0 adds that many residual per-frame 3x3 blocks
    # after it (never mixing frames: causal), before the patch convolution and the byte skip.
    encoder_convs: int = 0
    # Initial weights (training from scratch only). "gpt": std 0.02 everywhere, as before; the
    # patch tokens then enter the first block with std ~0.001-0.003, a variance at or below
    # LayerNorm's epsilon. "scaled": byte embeddings N(0, 1) and the local encoder's
    # convolutions and byte skip fan-in scaled (He for the GELU'd frame conv), so tokens and
    # per-pixel states start at unit scale; the transformer's linears keep 0.02. "ordinal": as
    # gpt, but byte embeddings start as unit-scale features of the byte value
    # (`ordinal_bytes`), so bytes 150 and 151 start alike; with random rows every shade of a
    # shaded 3D scene is a new symbol to learn (measured: benchmarks/RESULTS.md, issue 28).
    init: Literal["gpt", "scaled", "ordinal"] = "gpt"
    # 3D RoPE frequencies of the global (and encoder) attention. "head": eq. (1)-(4) over each
    # head's width (every head sees t, y and x; the top frequency is base^(-6 / head_dim)).
    # "model": as the paper writes them, over the latent width d, the d/2 pairs then split
    # among the heads (a head may see one axis only; top frequency base^(-6 / d)).
    rope_width: Literal["head", "model"] = "head"
    # How slices are cut into patches. "static": every slice into `patch`-sized patches (the
    # paper). "entropy": a quadtree over the menu patch * (1, 2^l, 2^l), l < patch_levels,
    # splitting a region while some pixel in it has an entropy of at least entropy_threshold
    # bits under a tiny causal entropy model entropy_width wide, trained with the model
    # (models/patching.py): latents go where the video is hard to predict. patch_budget > 0
    # caps each slice at that fraction of static `patch` patches, splitting first the regions
    # that hold the most entropy (0: no cap, the threshold alone decides).
    patching: Literal["static", "entropy"] = "static"
    patch_levels: int = 3
    entropy_threshold: float = 0.0
    patch_budget: float = 0.0
    entropy_width: int = 16

    def __post_init__(self) -> None:
        check_rope_heads(self.dim, self.heads)
        check_rope_heads(self.decoder_dim, self.decoder_heads, "decoder_dim")
        if min(self.patch) < 1 or len(self.patch) != 3:
            raise ValueError(f"patch={self.patch} must be three positive sizes (pt, ph, pw)")
        if self.init not in ("gpt", "scaled", "ordinal") or self.rope_width not in ("head",
                                                                                 "model"):
            raise ValueError(f"init={self.init!r} (gpt, scaled, ordinal) or rope_width="
                             f"{self.rope_width!r} (head, model) is unknown")
        if self.rope_width == "model" and self.dim % 6:
            raise ValueError(f"rope_width=model needs dim={self.dim} divisible by 6")
        if self.decoder_convs < 0 or self.encoder_convs < 0:
            raise ValueError(f"decoder_convs={self.decoder_convs} and encoder_convs="
                             f"{self.encoder_convs} must be >= 0")
        if self.patching not in ("static", "entropy"):
            raise ValueError(f"patching={self.patching!r} is unknown (static, entropy)")
        if self.patching == "entropy":
            if not 2 <= self.patch_levels <= 6:
                raise ValueError(f"patch_levels={self.patch_levels} must be 2..6 (the menu's "
                                 "sizes, finest first)")
            if not 0.0 <= self.entropy_threshold < MAX_BITS:
                raise ValueError(f"entropy_threshold={self.entropy_threshold} must be in [0, 8) "
                                 "bits (0 splits every region)")
            if not 0.0 <= self.patch_budget <= 1.0:
                raise ValueError(f"patch_budget={self.patch_budget} must be in [0, 1] (a "
                                 "fraction of the static patches per slice; 0: no cap)")
            if self.entropy_width < 1:
                raise ValueError(f"entropy_width={self.entropy_width} must be positive")

    def for_data(self, frame_shape: tuple[int, int, int, int]) -> VBLTConfig:
        """This config for videos of frame_shape (T, H, W, C): the data's channels; refused
        when the patch does not tile the frames or leaves fewer than two time slices."""
        t, h, w, c = frame_shape
        pt, ph, pw = self.patch
        if t % pt or h % ph or w % pw or t < 2 * pt:
            raise ConfigError(f"patch {pt}x{ph}x{pw} does not tile the data's {t}x{h}x{w} frames "
                              f"(T, H, W must be multiples of it, with at least two time slices)")
        if self.patching == "entropy":
            _, top_h, top_w = menu(self.patch, self.patch_levels)[-1]
            if h % top_h or w % top_w:
                sizes = ", ".join("x".join(map(str, m)) for m in menu(self.patch,
                                                                       self.patch_levels))
                raise ConfigError(f"the patch menu {sizes} (patch_levels={self.patch_levels}) "
                                  f"does not tile the data's {h}x{w} frames: its largest size "
                                  f"must divide them")
        return replace(self, channels=c)


def ordinal_bytes(width: int) -> torch.Tensor:
    """(256, width) unit-scale features of each byte value v: u = 2 v / 255 - 1, then cos and
    sin of pi k u for k = 1, 2, 4, ...: near values start near each other (as for a model that
    reads v / 127.5 - 1), far ones apart, and the table stays free to learn."""
    u = torch.arange(256, dtype=torch.float32) / 255 * 2 - 1
    cols = [u]
    k = 1
    while len(cols) < width:
        cols += [torch.cos(math.pi * k * u), torch.sin(math.pi * k * u)]
        k *= 2
    return torch.stack(cols[:width], dim=1)


class PixelConvBlock(nn.Module):
    """x + conv(GELU(conv(norm(x)))) over each frame's pixel states: 3x3 kernels and a norm
    over each pixel's channels, so nothing mixes frames (causal wherever it runs)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv1 = FrameConv(dim, dim)
        self.conv2 = FrameConv(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D, T, H, W) -> the same shape."""
        # Positive dims: the TorchScript ONNX exporter writes movedim(-1, 1) as a Transpose with
        # perm {0, -1, ...}, which ONNX Runtime refuses to load.
        y = self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return x + self.conv2(F.gelu(self.conv1(y)))


class LocalEncoder(nn.Module):
    """Bytes -> one latent per (pt, ph, pw) patch: per-frame conv, patch conv, shallow blocks."""

    def __init__(self, cfg: VBLTConfig) -> None:
        super().__init__()
        self.byte_embed = nn.Embedding(256, cfg.byte_dim)
        # kernel 1 in time: convolutions see one frame, never the next slice.
        self.frame_conv = FrameConv(cfg.channels * cfg.byte_dim, cfg.conv_dim)
        self.convs = nn.ModuleList(PixelConvBlock(cfg.conv_dim) for _ in range(cfg.encoder_convs))
        self.patch_conv = nn.Conv3d(cfg.conv_dim, cfg.dim, cfg.patch, stride=cfg.patch)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout)
            for _ in range(cfg.encoder_layers))

    def features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (finest patch features (B, D, S, Hp, Wp), per-pixel states (B, conv, T, H, W))."""
        x = self.byte_embed(video.long())  # (B, T, H, W, C, e)
        x = x.flatten(-2).permute(0, 4, 1, 2, 3)  # (B, C*e, T, H, W)
        pixels = F.gelu(self.frame_conv(x))  # (B, conv, T, H, W)
        for conv in self.convs:
            pixels = conv(pixels)
        return self.patch_conv(pixels), pixels

    def mix(self, tokens: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor
            ) -> torch.Tensor:
        """The shallow block-causal transformer over the patch tokens (B, L, D)."""
        for block in self.blocks:
            tokens = block(tokens, angles, mask)
        return tokens

    def forward(self, video: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Static patches -> (patch latents (B, S*Hp*Wp, D), per-pixel states (B, conv_dim, T,
        H, W))."""
        grid, pixels = self.features(video)  # (B, D, S, Hp, Wp)
        tokens = grid.flatten(2).transpose(1, 2)  # (B, S*Hp*Wp, D), slice-major
        return self.mix(tokens, angles, mask), pixels


class DecoderBlock(nn.Module):
    """Pixel queries cross-attend to the latents of the previous slice, then an MLP.

    No self-attention over pixels: pt * H * W queries would make it quadratic in pixels.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, context: torch.Tensor,
                context_angles: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.cross(self.norm1(x), angles, context=context, kv_angles=context_angles,
                           mask=mask)
        return x + self.mlp(self.norm2(x))


class LocalDecoder(nn.Module):
    """Latents of slice s -> 256-way logits for every byte of slice s + 1."""

    def __init__(self, cfg: VBLTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.upsample = nn.ConvTranspose3d(cfg.dim, cfg.decoder_dim, cfg.patch, stride=cfg.patch)
        self.context = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.blocks = nn.ModuleList(
            DecoderBlock(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio, cfg.dropout)
            for _ in range(cfg.decoder_layers))
        self.convs = nn.ModuleList(PixelConvBlock(cfg.decoder_dim)
                                   for _ in range(cfg.decoder_convs))
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.head = nn.Linear(cfg.decoder_dim, cfg.channels * 256)
        pt = cfg.patch[0]
        # Per pixel: the encoder states of the last `skip_frames` frames up to the end of slice s
        # (at least two, so a pixel sees its own motion) -> a query offset per frame of s+1.
        self.skip_frames = max(pt, 2)
        self.skip = (nn.Linear(self.skip_frames * cfg.conv_dim, pt * cfg.decoder_dim)
                     if cfg.byte_skip else None)
        self.copy = nn.Embedding(256, 256) if cfg.byte_skip and cfg.copy_prior else None

    def positions(self, hp: int, wp: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """RoPE angles of pixel queries and latent keys, both in patch units, so attention sees
        the pixel's offset from each latent; queries sit one slice after their keys."""
        pt, ph, pw = self.cfg.patch
        head_dim = self.cfg.decoder_dim // self.cfg.decoder_heads
        pix = grid_positions(pt, hp * ph, wp * pw, device)  # (pt*H*W, 3)
        pix = (pix + 0.5) / torch.tensor([pt, ph, pw], device=device) - 0.5
        pix[:, 0] += 1.0
        lat = grid_positions(1, hp, wp, device)  # (P, 3)
        base = self.cfg.rope_base
        return rope_3d_angles(pix, head_dim, base), rope_3d_angles(lat, head_dim, base)

    def forward(self, latents: torch.Tensor, hp: int, wp: int, pixels: torch.Tensor | None = None,
                last: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_positions: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, padded: bool = False
                ) -> torch.Tensor:
        """latents (B, S', P, D) of source slices on the finest patch grid (and, with byte_skip,
        their per-pixel encoder states (B, conv, S'*pt, H, W) and last frames' bytes (B, S', H,
        W, C)) -> logits (B, S', pt, H, W, C, 256). Dynamic patching paints each finest cell
        with the latent of the patch over it and gives the latents the queries attend to as
        `context` (B, S', N, D), their (y, x) centres (N, 2) in finest cells and a key-padding
        mask (B, S', N). `padded`: `pixels` already start with the skip window's padding
        (`skip_frames - pt` frames before the first source slice)."""
        b, s, p, d = latents.shape
        pt, ph, pw = self.cfg.patch
        flat = latents.reshape(b * s, p, d)
        grid = flat.transpose(1, 2).reshape(b * s, d, 1, hp, wp)  # (B*S', D, 1, Hp, Wp)
        x = self.upsample(grid)  # (B*S', Dd, pt, H, W): each latent paints its own patch
        x = x.flatten(2).transpose(1, 2)  # (B*S', pt*H*W, Dd)
        if self.skip is not None:
            h, w, f = hp * ph, wp * pw, self.skip_frames
            # Frames before the first are its copies; window j ends at the last frame of slice j.
            if not padded:
                pixels = torch.cat([pixels[:, :, :1].expand(-1, -1, f - pt, -1, -1), pixels],
                                   dim=2)
            # Frame i of window j is padded frame j*pt + i (strided slices: exports to ONNX).
            windows = torch.stack([pixels[:, :, i:i + (s - 1) * pt + 1:pt] for i in range(f)],
                                  dim=-1)  # (B, conv, S', H, W, f)
            states = windows.permute(0, 2, 3, 4, 5, 1).reshape(b * s, h * w, -1)
            states = self.skip(states)  # (B*S', H*W, pt*Dd)
            states = states.view(b * s, h, w, pt, -1).permute(0, 3, 1, 2, 4)  # (B*S', pt, H, W, Dd)
            x = x + states.reshape(b * s, pt * h * w, -1)
        q_angles, k_angles = self.positions(hp, wp, latents.device)
        mask = None
        if context is None:
            context = self.context(flat)  # (B*S', P, Dd)
        else:
            context = self.context(context.flatten(0, 1))  # (B*S', N, Dd)
            centres = F.pad(context_positions, (1, 0))  # t = 0: the source slice
            k_angles = rope_3d_angles(centres, self.cfg.decoder_dim // self.cfg.decoder_heads,
                                      self.cfg.rope_base)
            mask = context_mask.reshape(b * s, 1, 1, -1)
        for block in self.blocks:
            x = block(x, q_angles, context, k_angles, mask)
        if len(self.convs):
            grid = x.transpose(1, 2).reshape(b * s, -1, pt, hp * ph, wp * pw)
            for conv in self.convs:
                grid = conv(grid)
            x = grid.flatten(2).transpose(1, 2)
        logits = self.head(self.norm(x))  # (B*S', pt*H*W, C*256)
        logits = logits.view(b, s, pt, hp * ph, wp * pw, self.cfg.channels, 256)
        if self.copy is not None:
            logits = logits + self.copy(last.long())[:, :, None]  # same for every frame of s+1
        return logits


class VBLT(FramePredictor):
    """forward(uint8 video (B, T, H, W, C)) -> logits (B, T - pt, H, W, C, 256) for every frame
    after the first time slice; the logits of a frame depend only on earlier slices."""

    config_class = VBLTConfig

    def __init__(self, cfg: VBLTConfig) -> None:
        super().__init__(cfg)
        self.encoder = LocalEncoder(cfg)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout)
            for _ in range(cfg.global_layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.decoder = LocalDecoder(cfg)
        init_weights(self)
        if cfg.init == "scaled":
            self._scale_local_init()
        if cfg.init == "ordinal":
            with torch.no_grad():
                self.encoder.byte_embed.weight.copy_(ordinal_bytes(cfg.byte_dim))
        if self.decoder.copy is not None:
            with torch.no_grad():
                self.decoder.copy.weight.copy_(torch.eye(256) * cfg.copy_prior)
        # Dynamic patching's own modules are built last, so that a seed gives every other weight
        # the value it gives the static model: static and dynamic runs start paired. The patch
        # of menu level l is a learned 2x2 merge of its four quarters at level l - 1 (a linear
        # map of its pixels' states, as a bigger patch convolution would be).
        dynamic = cfg.patching == "entropy"
        self.merges = nn.ModuleList(
            nn.Conv3d(cfg.dim, cfg.dim, (1, 2, 2), stride=(1, 2, 2))
            for _ in range(cfg.patch_levels - 1 if dynamic else 0))
        self.entropy_model = EntropyModel(cfg.channels, cfg.entropy_width) if dynamic else None
        if dynamic:
            init_weights(self.merges)
            init_weights(self.entropy_model)

    @torch.no_grad()
    def _scale_local_init(self) -> None:
        """`init="scaled"`: unit-scale bytes, per-pixel states and patch tokens at init."""
        enc = self.encoder
        nn.init.normal_(enc.byte_embed.weight, std=1.0)
        layers = [(enc.frame_conv, math.sqrt(2.0)), (enc.patch_conv, 1.0)]
        if self.decoder.skip is not None:
            layers.append((self.decoder.skip, 1.0))
        for layer, gain in layers:
            fan_in = layer.weight[0].numel()
            nn.init.normal_(layer.weight, std=gain / math.sqrt(fan_in))

    def latent_angles(self, s: int, hp: int, wp: int, device: torch.device) -> torch.Tensor:
        """RoPE angles of the S*Hp*Wp latents: (L, head_dim / 2) with rope_width "head", one
        set per head (heads, L, head_dim / 2) with "model"."""
        return self.angles_at(grid_positions(s, hp, wp, device))

    def angles_at(self, positions: torch.Tensor) -> torch.Tensor:
        """RoPE angles of latents at positions (..., L, 3) = (t, y, x) in slices and finest
        patch cells: (..., L, head_dim / 2) with rope_width "head", (..., heads, L, head_dim /
        2) with "model"."""
        cfg = self.cfg
        lead, length = positions.shape[:-2], positions.shape[-2]
        flat = positions.reshape(-1, 3)
        if cfg.rope_width == "head":
            angles = rope_3d_angles(flat, cfg.dim // cfg.heads, cfg.rope_base)
            return angles.view(*lead, length, -1)
        angles = rope_3d_angles(flat, cfg.dim, cfg.rope_base)  # (., d/2): t | y | x
        return angles.view(*lead, length, cfg.heads, -1).transpose(-2, -3)  # (.., nh, L, hd/2)

    def loss(self, video: torch.Tensor, own_inputs: float = 0.0
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The frame predictor's loss; with dynamic patching plus the entropy model's own
        cross-entropy (its inputs are bytes: the two share no gradient)."""
        loss, extra = super().loss(video, own_inputs)
        if self.entropy_model is None:
            return loss, extra
        aux = self.entropy_model.loss(video)
        return loss + aux, {**extra, "entropy_model_nll": float(aux.detach())}

    def patch_selection(self, video: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Dynamic patching of every time slice: per menu level (finest first) which patches
        are used, (B, S, Hp >> l, Wp >> l) bool, and the entropy (bits) that decided it,
        (B, S, H, W): per pixel the largest over the slice's frames."""
        cfg = self.cfg
        b, t, h, w, _ = video.shape
        pt, ph, pw = cfg.patch
        entropy = self.entropy_model.entropy(video).view(b, t // pt, pt, h, w).amax(2)
        budget = max(int(cfg.patch_budget * (h // ph) * (w // pw)), 1) if cfg.patch_budget else 0
        return quadtree(entropy, (ph, pw), cfg.patch_levels, cfg.entropy_threshold,
                        budget), entropy

    def figure(self, video: np.ndarray, title: str = "") -> bytes | None:
        """The frame predictor's figure; with dynamic patching two more rows: each prediction's
        source slice (its last frame) with the patches it was cut into, and the entropy that
        cut it."""
        if self.entropy_model is None:
            return super().figure(video, title)
        from framecast import viz
        from framecast.predict import predict

        pt, ph, pw = self.cfg.patch
        k = self.context_frames
        pred, entropy, _ = predict(self, video[None])
        device = next(self.parameters()).device
        with torch.no_grad():
            selected, slice_entropy = self.patch_selection(
                torch.from_numpy(np.ascontiguousarray(video[None])).to(device))
        boxes = [[(int(i) * ph << level, int(j) * pw << level, ph << level, pw << level)
                  for level, sel in enumerate(selected)
                  for i, j in sel[0, s].nonzero().tolist()] for s in range(len(slice_entropy[0]))]
        sources = [f // pt - 1 for f in range(k, len(video))]  # the slice each frame came from
        used = sum(len(boxes[s]) for s in range(len(boxes) - 1))
        static = (len(boxes) - 1) * (video.shape[1] // ph) * (video.shape[2] // pw)
        view = viz.PatchView(inputs=video[[(s + 1) * pt - 1 for s in sources]],
                             boxes=[boxes[s] for s in sources],
                             entropy=slice_entropy[0, sources].cpu().numpy())
        title = (f"{title}  " if title else "") + (
            f"latents {used} of {static} ({used / static:.0%} of static {pt}x{ph}x{pw})")
        return viz.prediction_figure(video[k:], pred[0], entropy[0], title=title, patches=view)

    def _forward_dynamic(self, video: torch.Tensor) -> torch.Tensor:
        """forward with entropy-driven patches: the selected menu patches of every slice are
        packed (padded to the batch's longest clip), run through the encoder's and the global
        transformer's block-causal attention at their centres' 3D positions, and each source
        slice's latents reach the decoder by the finest cells they cover."""
        b, t, h, w, c = video.shape
        pt, ph, pw = self.cfg.patch
        s, hp, wp = t // pt, h // ph, w // pw
        grid, pixels = self.encoder.features(video)
        levels = [grid]  # every menu patch's features, finest first: (B, D, S, h_l, w_l)
        for merge in self.merges:
            levels.append(merge(levels[-1]))
        # (B, S, N, D) in `patching.Layout` order (finest level first, row-major)
        candidates = torch.cat([g.flatten(3) for g in levels], dim=-1).permute(0, 2, 3, 1)
        layout = Layout(hp, wp, self.cfg.patch_levels, video.device)
        selected, _ = self.patch_selection(video)
        chosen = layout.flatten(selected)  # (B, S, N)
        index, valid = pack(chosen)  # (B, L)
        d = candidates.shape[-1]
        x = candidates.reshape(b, s * layout.size, d).gather(1, index[..., None].expand(-1, -1, d))
        positions = layout.positions(s)[index]  # (B, L, 3)
        angles = self.angles_at(positions)
        if self.cfg.rope_width == "head":
            angles = angles[:, None]  # (B, 1, L, hd/2): one set for every head
        mask = packed_mask(index // layout.size, valid)
        x = self.encoder.mix(x, angles, mask)
        for block in self.blocks:
            x = block(x, angles, mask)
        latents = unpack(self.norm(x), index, valid, s * layout.size).view(b, s, -1, d)[:, :-1]
        cover = layout.covering([sel[:, :-1] for sel in selected])  # (B, S-1, Hp*Wp)
        fine = latents.gather(2, cover[..., None].expand(-1, -1, -1, d))  # (B, S-1, Hp*Wp, D)
        last = video[:, pt - 1:t - pt:pt]
        logits = self.decoder(fine, hp, wp, pixels[:, :, :t - pt], last, context=latents,
                              context_positions=layout.centres, context_mask=chosen[:, :-1])
        return logits.reshape(b, t - pt, h, w, c, 256)

    @property
    def context_frames(self) -> int:
        """Frames at the start that are given, never predicted: the first time slice."""
        return self.cfg.patch[0]

    @property
    def frames_per_step(self) -> int:
        """Frames one forward step predicts together (a time slice): a rollout appends this many
        placeholder frames, reads their logits, and repeats."""
        return self.cfg.patch[0]

    def _check_video(self, video: torch.Tensor) -> None:
        check_patched_video(video, self.cfg.patch, self.cfg.channels)

    def next_step_logits(self, video: torch.Tensor) -> torch.Tensor:
        """The last time slice's logits only, as `forward(video)[:, -pt:]` computes them: the
        encoder and global transformer run on the slices before it (block-causal: the last
        slice changes nothing before it) and the per-pixel decoder on the one slice that
        predicts it, not on every slice (5 of 6 decoder passes saved on a 12-frame `small`
        clip, the decoder being the largest byte-level cost). Its attention skips what the mask
        hides (`BlockCausal`: 1.5x faster at 5 slices of 64 latents on a CPU) and its last
        global block runs for the last slice only (benchmarks/RESULTS.md, issue 31)."""
        self._check_video(video)
        if self.entropy_model is not None:  # patches depend on the whole clip's entropy
            return super().next_step_logits(video)
        b, t, h, w, c = video.shape
        pt, ph, pw = self.cfg.patch
        s, hp, wp = t // pt - 1, h // ph, w // pw  # the source slices
        angles = self.latent_angles(s, hp, wp, video.device)
        # Each query slice against the slices up to it, not a dense masked product; and the
        # last block for the last slice only, the one whose latents the decoder reads.
        mask = BlockCausal(s, hp * wp)
        x, pixels = self.encoder(video[:, :t - pt], angles, mask)
        for block in self.blocks[:-1]:
            x = block(x, angles, mask)
        last = self.blocks[-1].last_tokens if len(self.blocks) else lambda x, *_: x[:, -hp * wp:]
        x = last(x, angles, hp * wp)
        latents = self.norm(x.view(b, 1, hp * wp, -1))  # slice S-2 predicts S-1
        f = self.decoder.skip_frames  # the skip window of the last source slice, padded as
        history = torch.cat([pixels[:, :, :1].expand(-1, -1, f - pt, -1, -1), pixels], dim=2)
        logits = self.decoder(latents, hp, wp, history[:, :, -f:], video[:, t - pt - 1:t - pt],
                              padded=True)
        return logits.reshape(b, pt, h, w, c, 256)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = video.shape
        pt, ph, pw = self.cfg.patch
        self._check_video(video)
        if self.entropy_model is not None:
            return self._forward_dynamic(video)
        s, hp, wp = t // pt, h // ph, w // pw
        angles = self.latent_angles(s, hp, wp, video.device)
        mask = block_causal_mask(s, hp * wp, video.device)
        x, pixels = self.encoder(video, angles, mask)  # (B, S*P, D), (B, conv, T, H, W)
        for block in self.blocks:
            x = block(x, angles, mask)
        latents = self.norm(x).view(b, s, hp * wp, -1)[:, :-1]  # slices 0..S-2 predict 1..S-1
        last = video[:, pt - 1:t - pt:pt]  # (B, S-1, H, W, C): each source slice's last frame
        # (B, S-1, pt, H, W, C, 256)
        logits = self.decoder(latents, hp, wp, pixels[:, :, :t - pt], last)
        return logits.reshape(b, t - pt, h, w, c, 256)
