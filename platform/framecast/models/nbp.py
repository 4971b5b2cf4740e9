"""NBP: next-block prediction over a video tokenizer's token grid (the NBP paper, arXiv 2502.07737).

A LLaMA-style decoder (RMSNorm, SwiGLU, 3D RoPE over (t, y, x)) reads the token grid of its
tokenizer (B, T', H', W'). The first `cond_frames` time slices are the condition; the rest is
cut into equal blocks `block` = (bt, bh, bw), ordered by time, then rows, then columns (tokens
inside a block in (t, y, x) order). One sequence is

    condition tokens | begin-of-video block | blocks 0 .. n-2          (inputs)
                       block 0 ....................... block n-1       (targets)

so each token of the slot for block j is the token at the same place in block j - 1 (the
begin-of-video token for j = 0) and predicts the token of block j there. A slot carries the
RoPE position of the token it predicts; the condition keeps its own positions (t < cond_frames).

Attention (`block_mask`): every token sees the whole condition; a video slot sees its own block
and all earlier ones (bidirectional inside a block, causal across blocks); condition tokens see
only the condition (they come first, so a cache filled with them never needs updating). With
block 1x1x1 this is plain next-token prediction, by the same code.

Generation: one forward step per block with a KV cache: the first step reads the condition, the
begin-of-video block and any context blocks after the condition; each later step feeds the block
just generated, whose slot predicts the next block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framecast.config import ConfigError
from framecast.models.contract import Metrics, TokenGenerator, Tokenizer, categorical_nll
from framecast.models.layers import (
    apply_rope,
    block_causal_mask,
    check_rope_heads,
    grid_positions,
    init_weights,
    rope_3d_angles,
    rope_rotations,
)
from framecast.models.registry import register_model

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class NBPConfig:
    tokenizer: str = ""  # the logged tokenizer: registered name, name@alias, run id or URI
    block: Shape3 = (1, 8, 8)  # (bt, bh, bw) tokens predicted together; 1x1x1 = next token
    cond_frames: int = 1  # time slices of the token grid given as the condition
    dim: int = 384
    heads: int = 8  # dim / heads must be a multiple of 6 (3D RoPE)
    layers: int = 6
    mlp_hidden: int = 1024  # SwiGLU width (LLaMA: about 8/3 of dim)
    dropout: float = 0.0
    # Positions along an axis of the token grid run to tens, not LLaMA's thousands: base 100
    # spreads the RoPE frequencies over that range (at 10000 a 12-wide head turns 0.01 rad per
    # step and cannot tell neighbours apart: a tiny model then fails to overfit one batch).
    rope_base: float = 100.0

    def __post_init__(self) -> None:
        check_rope_heads(self.dim, self.heads)
        if len(self.block) != 3 or min(self.block) < 1:
            raise ValueError(f"block={self.block} must be three positive sizes (bt, bh, bw)")
        if self.cond_frames < 1 or self.layers < 1:
            raise ValueError(f"cond_frames={self.cond_frames} and layers={self.layers} must "
                             "be >= 1")


NBP_PRESETS = {
    # The paper's smallest generator (700M: 24 layers, width 1536, 16 heads, LLaMA's SwiGLU
    # width) with its best block size, 16 tokens, as two rows of an 8-wide grid (the paper's
    # 1x1x16 is one row of its 16-wide grid); 5 condition frames as on K600. GPU only.
    "paper": {"dim": 1536, "heads": 16, "layers": 24, "mlp_hidden": 4096, "block": (1, 2, 8),
              "cond_frames": 5},
    # Trains in minutes on 2 CPU cores on a 12x8x8 grid of a 1000-code tokenizer; one frame
    # per block.
    "small": {"dim": 96, "heads": 2, "layers": 4, "mlp_hidden": 256, "block": (1, 8, 8)},
    # Seconds: for tests.
    "tiny": {"dim": 24, "heads": 1, "layers": 2, "mlp_hidden": 48, "block": (1, 2, 2)},
}


def _shape(dims: Shape3) -> str:
    return "x".join(str(d) for d in dims)


def check_tiling(grid: Shape3, block: Shape3) -> None:
    """Refuse (ConfigError, one line) a block that does not tile the token grid."""
    if any(g % b for g, b in zip(grid, block, strict=True)) or min(grid) < 1:
        raise ConfigError(f"block {_shape(block)} does not tile the token grid {_shape(grid)}: "
                          "each of its sizes must divide the grid's")


def block_order(grid: Shape3, block: Shape3, device: torch.device | None = None
                ) -> torch.Tensor:
    """(T*H*W,) raster indices of the grid's tokens in block order: blocks by time, then rows,
    then columns; inside a block (t, y, x). `flat[..., order]` puts a raster sequence in it."""
    check_tiling(grid, block)
    (t, h, w), (bt, bh, bw) = grid, block
    index = torch.arange(t * h * w, device=device).view(t // bt, bt, h // bh, bh, w // bw, bw)
    return index.permute(0, 2, 4, 1, 3, 5).reshape(-1)


def block_mask(grid: Shape3, block: Shape3, cond_tokens: int,
               device: torch.device | None = None) -> torch.Tensor:
    """Bool (N, N), N = cond_tokens + T*H*W, True where attention is allowed, over the condition
    followed by the grid's tokens in block order: everyone sees the condition; a video token
    sees its own block and earlier blocks; condition tokens see no video token."""
    check_tiling(grid, block)
    size = math.prod(block)
    video = block_causal_mask(math.prod(grid) // size, size, device)
    n = cond_tokens + video.shape[0]
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    mask[:, :cond_tokens] = True
    mask[cond_tokens:, cond_tokens:] = video
    return mask


Sampling = float | int | Sequence[float] | Sequence[int]


# torch.Generator.manual_seed takes any seed of 64 bits; a larger one overflows.
MAX_SEED = 2**64 - 1


def check_sampling(temperature: float, top_k: int, seed: int) -> None:
    """Refuse (ValueError, one line) a setting sampling cannot use: a temperature that is
    negative or not finite, a negative top_k, a seed outside 0..MAX_SEED."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 = greedy)")
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be >= 0 (0 = all tokens)")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed} must be in 0..{MAX_SEED} (2**64 - 1)")


def _per_row(value: Sampling, rows: int, name: str) -> list:
    """A sampling setting for the whole batch, or one per row, as one per row."""
    if isinstance(value, int | float):
        return [value] * rows
    if len(value) != rows:
        raise ValueError(f"{name}: {len(value)} values for a batch of {rows}")
    return list(value)


def sample_tokens(logits: torch.Tensor, temperature: list[float], top_k: list[int],
                  generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per position of logits (B, n, V), each row with its own settings: argmax at
    temperature 0, else a draw from the tempered softmax restricted to the top_k likeliest
    (0: all), from that row's generator (so a row's draws do not depend on its batch).
    With top_k, the draw is among the k candidates only: a draw over the whole vocabulary
    (exponential noise per entry) costs V per position and row, which batching cannot share."""
    b, _, vocab = logits.shape
    tokens = torch.empty(logits.shape[:2], dtype=torch.long, device=logits.device)
    greedy = [row for row in range(b) if temperature[row] == 0]
    if greedy:
        tokens[greedy] = logits[greedy].argmax(-1)
    by_k: dict[int, list[int]] = {}
    for row in range(b):
        if temperature[row] != 0:
            by_k.setdefault(top_k[row] if 0 < top_k[row] < vocab else 0, []).append(row)
    for k, rows in by_k.items():
        # One top-k for the rows that share k; then each row draws from its own generator.
        values, index = logits[rows].topk(k, dim=-1) if k else (logits[rows], None)
        for i, row in enumerate(rows):
            # Shifted to max 0 before tempering: a tiny temperature then sends the others to
            # -inf (a one-hot draw) instead of the top to +inf (inf - inf = nan in softmax).
            # Below float32's smallest normal it would be 0 in float32: the draw is the same.
            scores = values[i].float()
            scores = (scores - scores.amax(-1, keepdim=True)) / max(
                temperature[row], torch.finfo(torch.float32).tiny)
            probs = scores.softmax(-1)
            pick = torch.multinomial(probs, 1, generator=generators[row])
            tokens[row] = (pick if index is None else index[i].gather(-1, pick))[:, 0]
    return tokens


class KVCache:
    """Keys and values of every layer for the slots read so far, allocated once for the longest
    sequence; a step writes its slots after `length` and `advance` commits them."""

    def __init__(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (layers, batch, heads, max_len, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, nh, n, hd); return all of the layer's so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n


class SelfAttention(nn.Module):
    """LLaMA attention (no biases) with 3D RoPE on queries and keys and an optional KV cache."""

    quant_roles = {"qkv": "qkv", "out": "attn_out"}

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, angles), apply_rope(k, angles)  # (B, nh, n, hd)
        if cache is not None:
            k, v = cache.extend(layer, k, v)  # (B, nh, cached + n, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    quant_roles = {"gate": "mlp", "up": "mlp", "down": "mlp"}

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


class DecoderLayer(nn.Module):
    """Pre-norm (RMSNorm) attention, then a SwiGLU MLP."""

    def __init__(self, cfg: NBPConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.dropout)
        self.mlp_norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden, cfg.dropout)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), angles, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class NBP(TokenGenerator):
    """`forward(tokens (B, T', H', W'))` -> logits (B, (T'-c)*H'*W', V) for the tokens after the
    c = cond_frames condition slices, in raster (t, y, x) order: `logits[:, i]` predicts
    `tokens[:, c:].flatten(1)[:, i]` and depends only on the condition and earlier blocks."""

    config_class = NBPConfig
    headline = ("accuracy",)

    def __init__(self, cfg: NBPConfig, tokenizer: Tokenizer) -> None:
        super().__init__(cfg)
        self.tokenizer = tokenizer.eval().requires_grad_(False)  # frozen: trained on its own
        vocab = tokenizer.codebook_size
        self.bov = vocab  # the begin-of-video token: one more row of the embedding
        self.embed = nn.Embedding(vocab + 1, cfg.dim)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, vocab, bias=False)
        for part in (self.embed, self.layers, self.head):
            init_weights(part)

    def train(self, mode: bool = True) -> NBP:
        super().train(mode)
        self.tokenizer.eval()
        return self

    @property
    def block_tokens(self) -> int:
        return math.prod(self.cfg.block)

    def video_grid(self, grid: Shape3) -> Shape3:
        """The part of a token grid (T', H', W') after the condition; refused (one line) when
        the block does not tile it."""
        t, h, w = grid
        c = self.cfg.cond_frames
        if t <= c:
            raise ConfigError(f"the token grid {_shape(grid)} has no time slices after the "
                              f"{c} condition slice(s)")
        if any(g % b for g, b in zip((t - c, h, w), self.cfg.block, strict=True)):
            raise ConfigError(f"block {_shape(self.cfg.block)} does not tile the token grid "
                              f"{_shape((t - c, h, w))} after the {c} condition slice(s) of "
                              f"{_shape(grid)}")
        return t - c, h, w

    def check_data(self, frame_shape: tuple[int, int, int, int]) -> None:
        super().check_data(frame_shape)
        self.video_grid(self.tokenizer.grid(frame_shape))

    def forward_steps(self, frame_shape: tuple[int, int, int, int], context_frames: int) -> int:
        """Forward steps to continue `context_frames` video frames to a clip of frame_shape:
        one per generated block."""
        t, h, w = self.tokenizer.grid(tuple(frame_shape))
        known = self.tokenizer.grid((context_frames, *frame_shape[1:]))[0]
        _, done, total = self._plan(known, t - known, (h, w))
        return total - done

    def min_context_frames(self, frame_shape: tuple[int, int, int, int]) -> int:
        """The fewest frames whose tokens hold the cond_frames condition slices."""
        t, *rest = frame_shape
        for k in range(1, t):
            if self.tokenizer.grid((k, *rest))[0] >= self.cfg.cond_frames:
                return k
        raise ConfigError(f"clips of {t} frames hold no {self.cfg.cond_frames} condition "
                          "slice(s) and a frame to generate")

    def context_step(self, frame_shape: tuple[int, int, int, int]) -> int:
        """Frames of one block's time extent: context after the condition is whole blocks."""
        t = frame_shape[0]
        return self.cfg.block[0] * max(1, t // self.tokenizer.grid(tuple(frame_shape))[0])

    # -- the decoder --------------------------------------------------------------------------

    def _angles(self, grid: Shape3, device: torch.device) -> torch.Tensor:
        """RoPE rotations (complex) of the condition slots and the video slots (block order),
        (N, hd/2)."""
        c = self.cfg.cond_frames
        _, h, w = grid
        video = grid_positions(*grid, device) + torch.tensor([c, 0.0, 0.0], device=device)
        positions = torch.cat([grid_positions(c, h, w, device),
                               video[block_order(grid, self.cfg.block, device)]])
        # As rotations: every layer of every step applies them, so they are computed once.
        return rope_rotations(rope_3d_angles(positions, self.cfg.dim // self.cfg.heads,
                                             self.cfg.rope_base))

    def _decode(self, inputs: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None, keep: int = 0) -> torch.Tensor:
        """Token ids (B, n) of slots -> logits (B, n, V) (the last `keep` slots only if > 0)."""
        x = self.embed(inputs)
        for i, layer in enumerate(self.layers):
            x = layer(x, angles, mask, cache, i)
        if cache is not None:
            cache.advance(inputs.shape[1])
        if keep:
            x = x[:, -keep:]
        return self.head(self.norm(x))

    def _inputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Shape3, torch.Tensor]:
        """Token grid (B, T', H', W') -> slot inputs (condition | BOV | video[:-1 block]), the
        video grid, and the video tokens in block order (the targets)."""
        b, t, h, w = tokens.shape
        grid = self.video_grid((t, h, w))
        c = self.cfg.cond_frames
        order = block_order(grid, self.cfg.block, tokens.device)
        video = tokens[:, c:].reshape(b, -1)[:, order]  # (B, N) block order
        bov = torch.full((b, self.block_tokens), self.bov, dtype=torch.long,
                         device=tokens.device)
        inputs = torch.cat([tokens[:, :c].reshape(b, -1), bov, video[:, :-self.block_tokens]],
                           dim=1)
        return inputs, grid, video

    def _logits(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, N, V) and targets (B, N) of the video tokens, both in block order."""
        inputs, grid, video = self._inputs(tokens)
        cond = inputs.shape[1] - video.shape[1]
        mask = block_mask(grid, self.cfg.block, cond, tokens.device)
        logits = self._decode(inputs, self._angles(grid, tokens.device), mask)
        return logits[:, cond:], video

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits, _ = self._logits(tokens)
        b, t, h, w = tokens.shape
        order = block_order(self.video_grid((t, h, w)), self.cfg.block, tokens.device)
        return logits[:, torch.argsort(order)]  # block order -> raster

    # -- training and scores ------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 video -> the frozen tokenizer's tokens (B, T', H', W')."""
        return self.tokenizer.encode(video.to(self.norm.weight.device))

    def loss(self, video: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """Cross-entropy (nats per token) of every video token after the condition."""
        logits, target = self._logits(self.encode(video))
        accuracy = (logits.detach().argmax(-1) == target).float().mean()
        return categorical_nll(logits, target), {"accuracy": float(accuracy)}

    @torch.no_grad()
    def evaluate(self, videos: np.ndarray, batch_size: int = 8) -> Metrics:
        """Token cross-entropy (nats) and top-1 accuracy of the predicted tokens."""
        was_training = self.training
        self.eval()
        nll = correct = count = 0.0
        for start in range(0, len(videos), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(videos[start:start + batch_size]))
            logits, target = self._logits(self.encode(batch))
            nll += float(categorical_nll(logits, target, reduction="sum"))
            correct += float((logits.argmax(-1) == target).sum())
            count += target.numel()
        self.train(was_training)
        return {"loss": nll / count, "accuracy": correct / count}

    # -- generation ---------------------------------------------------------------------------

    def _plan(self, context: int, frames: int, hw: tuple[int, int]) -> tuple[Shape3, int, int]:
        """(video grid, blocks given by the context, blocks in all) for `context` token slices
        continued by `frames` more."""
        c, bt = self.cfg.cond_frames, self.cfg.block[0]
        if context < c:
            raise ConfigError(f"the context has {context} token slice(s); the model conditions "
                              f"on {c}")
        if (context - c) % bt:
            raise ConfigError(f"the context's {context - c} slice(s) after the condition are not "
                              f"whole blocks of {bt} slice(s)")
        grid = self.video_grid((context + frames, *hw))
        per_slice = math.prod(g // b for g, b in zip(grid[1:], self.cfg.block[1:], strict=True))
        return grid, (context - c) // bt * per_slice, grid[0] // bt * per_slice

    @torch.no_grad()
    def generate_tokens(self, context: torch.Tensor, frames: int, *,
                        temperature: Sampling = 0.0, top_k: Sampling = 0, seed: Sampling = 0,
                        use_cache: bool = True) -> tuple[torch.Tensor, int]:
        """Continue context tokens (B, T_c, H', W') by `frames` token slices -> (tokens (B,
        frames, H', W'), forward steps). The first cond_frames slices are the condition; any
        further context slices are given blocks (read in the first step, never sampled).
        Temperature 0 is greedy; sampling draws from a generator seeded with `seed`. Each
        setting is one value for the batch or one per row (rows sampled with their own settings
        and seeds: requests of a served batch keep theirs)."""
        was_training = self.training
        self.eval()
        b, t, h, w = context.shape
        grid, done, total = self._plan(t, frames, (h, w))
        size, device = self.block_tokens, context.device
        inputs, _, video = self._inputs(torch.cat(
            [context, context.new_zeros(b, frames, h, w)], dim=1))  # zeros: slots to fill
        cond = inputs.shape[1] - video.shape[1]
        slots = torch.cat([inputs, video[:, -size:]], dim=1)  # condition | BOV | every block
        angles = self._angles(grid, device)
        mask = block_mask(grid, self.cfg.block, cond, device)
        cache = KVCache(len(self.layers), b, self.cfg.heads, mask.shape[0],
                        self.cfg.dim // self.cfg.heads, device,
                        self.norm.weight.dtype) if use_cache else None
        temperature = _per_row(temperature, b, "temperature")
        top_k, seed = _per_row(top_k, b, "top_k"), _per_row(seed, b, "seed")
        for row in range(b):
            check_sampling(float(temperature[row]), int(top_k[row]), int(seed[row]))
        generators = [torch.Generator(device).manual_seed(int(s)) if t else None
                      for t, s in zip(temperature, seed, strict=True)]
        for j in range(done, total):
            end = cond + (j + 1) * size  # slots up to block j - 1 predict block j
            start = cache.length if cache is not None else 0
            step_mask = mask[start:end, :end]
            if bool(step_mask.all()):  # a cached block step sees everything so far: no mask
                step_mask = None  # (SDPA without one skips reading it: ~6% of its time)
            logits = self._decode(slots[:, start:end], angles[start:end], step_mask, cache,
                                  keep=size)
            slots[:, end:end + size] = sample_tokens(logits, temperature, top_k, generators)
        self.train(was_training)
        order = block_order(grid, self.cfg.block, device)
        raster = slots[:, cond + size:][:, torch.argsort(order)].view(b, *grid)
        return raster[:, -frames:], total - done

    @torch.no_grad()
    def generate(self, context: torch.Tensor, future_frames: int, *,
                 temperature: Sampling = 1.0, top_k: Sampling = 0, seed: Sampling = 0
                 ) -> torch.Tensor:
        """uint8 context (B, T, H, W, C) -> uint8 (B, future_frames, H, W, C): encode, generate
        the token slices of the future frames block by block, decode (with the context, unless
        the tokenizer is frame-independent)."""
        b, t, h, w, c = context.shape
        tokens = self.encode(context)
        frames = self.tokenizer.grid((t + future_frames, h, w, c))[0] - tokens.shape[1]
        new, _ = self.generate_tokens(tokens, frames, temperature=temperature, top_k=top_k,
                                      seed=seed)
        return self.decode_continuation(tokens, new, future_frames)

    @torch.no_grad()
    def decode_continuation(self, context: torch.Tensor, new: torch.Tensor,
                            future_frames: int) -> torch.Tensor:
        """Context token slices and the `new` ones after them -> uint8 (B, future_frames, H, W,
        C): the new slices alone when the tokenizer is frame-independent, else with the
        context."""
        if self.tokenizer.frame_independent:  # the context's frames need no decoding
            return self.tokenizer.decode(new)[:, -future_frames:]
        return self.tokenizer.decode(torch.cat([context, new], dim=1))[:, -future_frames:]


register_model("nbp", NBP_PRESETS)(NBP)
