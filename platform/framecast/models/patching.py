"""Entropy-driven dynamic patching for V-BLT: more latents where the video is hard to predict.

BLT (facebookresearch/blt, `bytelatent/data/patcher.py`) lets a small byte model's next-byte
entropy decide where a patch starts, so predictable stretches cost one latent and hard ones
several. Here the same rule tiles each time slice of a video by a quadtree over a fixed menu of
patch sizes, (pt, ph * 2^l, pw * 2^l) for l = 0 .. levels - 1: a region is split into its four
quarters while some pixel inside it has an entropy of at least the threshold (BLT's global
threshold, applied to every pixel of the region). Batches stay dense: the selected patches of a
clip are packed slice by slice and padded to the batch's longest clip, with masks.

The entropy model (`EntropyModel`) is a tiny convolutional net that predicts each frame from the
two before it; the entropy of a slice is, per pixel, the largest entropy of its frames' predicted
distributions. Why this design:
- causal by construction: the patching of slice s reads frames of slices <= s only (frame f's
  entropy comes from frames f - 2 and f - 1), never a frame the model predicts from slice s;
  frame 0 has no history and gets the maximum, 8 bits (a clip's first frame is all news);
- trained with the main model (its own loss is added to V-BLT's; its inputs are bytes, so no
  gradient passes between the two) rather than in a separate stage as BLT does: every job trains
  it with no job code that knows about it. At initialisation its distributions are uniform, so
  every region splits and training starts as the finest static patching; as it learns that the
  background is predictable, the background merges into coarse patches;
- cheap: two 3x3 convolutions per frame, well under 1% of the model's FLOPs;
- not the main model's own entropy: there the patching of slice s would depend on the model's
  output for slice s, so training would need one forward pass per slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framecast.metrics import entropy_bits

MAX_BITS = 8.0  # entropy of a uniform distribution over 256 byte values


class EntropyModel(nn.Module):
    """p(frame f | frames f - 2, f - 1) per pixel byte: byte embeddings, two 3x3 convolutions,
    a 1x1 head to 256 logits per channel (frame -1 is a copy of frame 0)."""

    history = 2

    def __init__(self, channels: int, width: int = 16, byte_dim: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.embed = nn.Embedding(256, byte_dim)
        self.net = nn.Sequential(
            nn.Conv2d(self.history * channels * byte_dim, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, channels * 256, 1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, C) -> logits (B, T - 1, H, W, C, 256) for frames 1 .. T - 1."""
        b, t, h, w, c = video.shape
        x = self.embed(video.long()).flatten(-2)  # (B, T, H, W, C*e)
        before = torch.cat([x[:, :1], x[:, :t - 2]], dim=1)  # frame f - 2 (f - 1 = 0: frame 0)
        inputs = torch.cat([before, x[:, :t - 1]], dim=-1)  # (B, T-1, H, W, 2*C*e)
        inputs = inputs.flatten(0, 1).permute(0, 3, 1, 2)  # (B*(T-1), 2*C*e, H, W)
        logits = self.net(inputs)  # (B*(T-1), C*256, H, W)
        return logits.view(b, t - 1, c, 256, h, w).permute(0, 1, 4, 5, 2, 3)

    def loss(self, video: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (nats per byte) of frames 1 .. T - 1."""
        logits = self(video)
        return F.cross_entropy(logits.reshape(-1, 256).float(), video[:, 1:].reshape(-1).long())

    @torch.no_grad()
    def entropy(self, video: torch.Tensor) -> torch.Tensor:
        """Per-pixel entropy in bits of every frame's prediction, (B, T, H, W): the largest over
        channels; frame 0, which has no history, MAX_BITS."""
        ent = entropy_bits(self(video)).amax(-1)  # (B, T-1, H, W)
        first = torch.full_like(ent[:, :1], MAX_BITS)
        return torch.cat([first, ent], dim=1)


def menu(patch: tuple[int, int, int], levels: int) -> list[tuple[int, int, int]]:
    """The patch sizes a slice may use, finest first: (pt, ph * 2^l, pw * 2^l)."""
    pt, ph, pw = patch
    return [(pt, ph << level, pw << level) for level in range(levels)]


def quadtree(entropy: torch.Tensor, cell: tuple[int, int], levels: int, threshold: float,
             budget: int = 0) -> list[torch.Tensor]:
    """Which patches tile each slice: per level l (finest first), a boolean (B, S, Hp >> l,
    Wp >> l) over that level's grid, True where the patch of size cell * 2^l is used. Top-down:
    a region splits while its peak entropy (B, S, H, W; bits) is >= threshold; the finest level
    never splits. With a `budget` (> 0), at most that many patches per slice: of the regions the
    threshold lets split, those that hold the most entropy (the sum over their pixels: the bits
    the region must explain) split first. A region's sum is at least each of its quarters', so
    a quarter never splits before its region. Every pixel of every slice is covered exactly
    once."""
    b, s, h, w = entropy.shape
    flat = entropy.reshape(b * s, 1, h, w)
    splits: dict[int, torch.Tensor] = {}
    for level in range(1, levels):
        size = (cell[0] << level, cell[1] << level)
        grid = (b, s, h // size[0], w // size[1])
        peak = F.max_pool2d(flat, size).view(grid)
        splits[level] = peak >= threshold
        if budget:
            total = F.avg_pool2d(flat, size).view(grid)  # sum / area: the same order per level
            splits[level] = torch.where(splits[level], total * (size[0] * size[1]), -1.0)
    if budget:
        splits = _within_budget(splits, budget)
    selected: list[torch.Tensor] = []
    covered: torch.Tensor | None = None
    for level in reversed(range(levels)):
        if covered is None:
            top = (b, s, h // (cell[0] << level), w // (cell[1] << level))
            covered = torch.ones(top, dtype=torch.bool, device=entropy.device)
        split = splits[level] if level else torch.zeros_like(covered)
        selected.insert(0, covered & ~split)
        covered = (covered & split).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return selected


def _within_budget(scores: dict[int, torch.Tensor], budget: int) -> dict[int, torch.Tensor]:
    """Per level, which regions split when each slice keeps at most `budget` patches: regions
    with a score >= 0 split in descending score, coarser first among equals, as long as the
    patches fit (each split turns one patch into four)."""
    levels = sorted(scores, reverse=True)  # coarsest first: the stable sort keeps that order
    flat = torch.cat([scores[level].flatten(2) for level in levels], dim=-1)  # (B, S, R)
    top = scores[levels[0]][0, 0].numel()  # patches of the coarsest level
    allowed = max((budget - top) // 3, 0)
    order = flat.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(
        flat.shape[-1], device=flat.device).expand_as(order))
    chosen = (rank < allowed) & (flat >= 0)
    out, start = {}, 0
    for level in levels:
        n = scores[level][0, 0].numel()
        out[level] = chosen[..., start:start + n].view(scores[level].shape)
        start += n
    return out


class Layout:
    """The candidate patches of one time slice on a grid of (hp, wp) finest cells: every level's
    cells, finest first, row-major inside a level (N in all). Holds their centres in finest-cell
    units, (N, 2) as (y, x), and, per level, each finest cell's candidate index."""

    def __init__(self, hp: int, wp: int, levels: int, device: torch.device) -> None:
        self.hp, self.wp, self.levels = hp, wp, levels
        centres, cover, offset = [], [], 0
        ys = torch.arange(hp, device=device)[:, None]
        xs = torch.arange(wp, device=device)[None, :]
        for level in range(levels):
            h, w, k = hp >> level, wp >> level, 1 << level
            yy, xx = torch.meshgrid(torch.arange(h, device=device),
                                    torch.arange(w, device=device), indexing="ij")
            centres.append(torch.stack([yy, xx], dim=-1).reshape(-1, 2) * k + (k - 1) / 2)
            cover.append(offset + (ys >> level) * w + (xs >> level))  # (hp, wp)
            offset += h * w
        self.size = offset
        self.centres = torch.cat(centres).float()  # (N, 2)
        self.cover = torch.stack(cover)  # (levels, hp, wp)

    def flatten(self, selected: list[torch.Tensor]) -> torch.Tensor:
        """Per-level selections (B, S, h_l, w_l) -> (B, S, N) in candidate order."""
        return torch.cat([sel.flatten(2) for sel in selected], dim=-1)

    def covering(self, selected: list[torch.Tensor]) -> torch.Tensor:
        """(B, S, hp * wp): the candidate index of the selected patch over each finest cell."""
        index = torch.zeros(selected[0].shape, dtype=torch.long, device=selected[0].device)
        for level, sel in enumerate(selected):
            k = 1 << level
            up = sel.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
            index = torch.where(up, self.cover[level], index)
        return index.flatten(2)

    def positions(self, slices: int) -> torch.Tensor:
        """(S * N, 3) positions (t, y, x) of every candidate of every slice, slice-major."""
        t = torch.arange(slices, device=self.centres.device).repeat_interleave(self.size)
        return torch.cat([t[:, None].float(), self.centres.repeat(slices, 1)], dim=1)


def pack(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, N) selections -> (index (B, L), valid (B, L)): each clip's selected candidates in
    slice-major order as indices into S * N, padded to the batch's longest clip (L)."""
    b, s, n = selected.shape
    flat = selected.reshape(b, s * n)
    order = torch.arange(s * n, device=flat.device)
    index = torch.where(flat, order, order + s * n).argsort(dim=1)  # selected ones first
    counts = flat.sum(dim=1)
    length = int(counts.max())
    valid = torch.arange(length, device=flat.device)[None, :] < counts[:, None]
    return index[:, :length], valid


def packed_mask(slices: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) boolean attention mask of packed tokens, True = may attend: block-causal over
    their time slices (B, L) and never to padding. A padding query still sees the clip's first
    token, so no row is empty."""
    return ((slices[:, None, :] <= slices[:, :, None]) & valid[:, None, :])[:, None]


def unpack(x: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, total: int) -> torch.Tensor:
    """Packed (B, L, D) -> (B, total, D) in candidate order, zeros where nothing was selected."""
    b, _, d = x.shape
    dest = torch.where(valid, index, total)  # padding lands in a spare row, dropped below
    out = x.new_zeros(b, total + 1, d).scatter(1, dest[..., None].expand(-1, -1, d), x)
    return out[:, :total]

