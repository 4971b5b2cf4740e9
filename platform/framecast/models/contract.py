"""The model contract: what every model in the registry promises, so that training, evaluation,
quantization, MLflow and Serve handle any of them without knowing which one it is.

Read this first when adding a model. A new model is one file: a config dataclass, a subclass of
one family below, and `register_model(name, presets)(TheClass)` (see `registry`). Nothing in
`train.py`, `jobs/` or `serve/` changes, and nothing there branches on a model's name.

Every model (`Model`):
- is built from one frozen config dataclass (`config_class`, stored as `self.cfg`); the config may
  define `for_data(frame_shape) -> config` to fill fields the data decides (channels) and to
  refuse data it cannot read (raising `ConfigError`), checked before any job starts Ray;
- trains on uint8 video batches `(B, T, H, W, C)`: `loss(video) -> (loss, metrics)` is its own
  objective (the nanoGPT `forward(idx, targets)` idea), so the loop knows no vocabulary size,
  channel count or token grid; `metrics` are extra floats to log;
- scores itself on held-out videos: `evaluate(videos) -> {metric: float}` (logged with a `val_` /
  `test_` prefix), `headline` names the metrics a progress line shows, and `quality(videos)` is
  the one number (higher is better) that quantization's fall-back judges;
- may draw a figure of one video for MLflow (`figure(video) -> PNG bytes`, None when it has none);
- lists the registered models it contains (`components()`: a generator's tokenizer): they are
  saved, logged and loaded with it as one unit (tensors + JSON, never pickles).

Families:
- `FramePredictor` (V-BLT, ViViT, UNet-3D): uint8 video in, a categorical distribution
  over every pixel value of the frames after the first `context_frames` out; `frames_per_step`
  frames are predicted per forward step (a rollout appends that many placeholder frames, reads
  their distributions and repeats).
- `Tokenizer`: uint8 video <-> integer token grid `(B, T', H', W')`; `codebook_size` and `grid()`
  are its properties, not constants elsewhere.
- `TokenGenerator`: token grid in, logits over its tokenizer's codebook out; it holds (and names)
  the tokenizer it was trained with, and generates video block by block with a cache; its
  `quality` is the PSNR of greedy continuations.

Quantization (`framecast.quant`) swaps linear layers and names their role in VQ-ViT's progressive
schedule from the module that holds them: a module class lists `quant_roles = {child: role}`
(roles "mlp", "attn_out", "qkv"; anything unlisted is "embed_head"). Layers of components are
never quantized with their holder (a tokenizer is trained and judged on its own).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from framecast import metrics
from framecast.config import ConfigError
from framecast.distribution import (  # noqa: F401 (categorical_nll: for the models)
    DECODES,
    DEFAULT_DECODE,
    categorical_nll,
    decode_bytes,
    decode_with_entropy,
)

Metrics = dict[str, float]


class Model(nn.Module, abc.ABC):
    """What every registered model is. Subclasses set `family` and `config_class`."""

    family: ClassVar[str]
    config_class: ClassVar[type]
    headline: ClassVar[tuple[str, ...]] = ()  # `evaluate` keys a progress line shows
    registry_name: str = ""  # set by the registry when it builds the model

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the model's float work: its first float parameter's (bf16 after
        `quant.apply.to_bf16`). A model that turns bytes into floats itself converts to this,
        not to float32, so every layer after gets inputs of its own dtype."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()),
                    torch.float32)

    @abc.abstractmethod
    def loss(self, video: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """The training objective on a uint8 batch (B, T, H, W, C): a scalar to minimise and
        extra metrics (floats) worth logging."""

    @abc.abstractmethod
    def evaluate(self, videos: np.ndarray, batch_size: int = 8) -> Metrics:
        """Scores on held-out uint8 videos (N, T, H, W, C), averaged; no prefix."""

    def quality(self, videos: np.ndarray, batch_size: int = 8) -> float:
        """One number, higher is better, that quantization uses to judge a stage."""
        return -self.evaluate(videos, batch_size)["loss"]

    def figure(self, video: np.ndarray, title: str = "") -> bytes | None:
        """A PNG of what the model makes of one uint8 video (T, H, W, C); None if nothing."""
        return None

    def components(self) -> dict[str, Model]:
        """Registered models this one contains, by attribute name (saved and loaded with it)."""
        return {}

    def check_data(self, frame_shape: tuple[int, int, int, int]) -> None:
        """Refuse (ConfigError, one line) data of frame_shape (T, H, W, C) this built model
        cannot read: by default its config fitted to the data (`for_data`) must equal its
        config; a composite also asks its components."""
        for part in self.components().values():
            part.check_data(frame_shape)
        cfg = self.cfg
        if not hasattr(cfg, "for_data"):
            return
        fitted = cfg.for_data(tuple(frame_shape))
        changed = {f.name: (getattr(cfg, f.name), getattr(fitted, f.name))
                   for f in dataclasses.fields(cfg)
                   if getattr(cfg, f.name) != getattr(fitted, f.name)}
        if changed:
            raise ConfigError(f"{self.registry_name or type(self).__name__} does not fit data "
                              f"of frame shape {tuple(frame_shape)}: " + ", ".join(
                                  f"{k}={a} (data: {b})" for k, (a, b) in changed.items()))

    @classmethod
    def component_refs(cls, cfg: Any) -> dict[str, str]:
        """Logged models a new instance is built around, by constructor argument (a generator's
        tokenizer: a registered name, `name@alias`, run id or URI in its config). Jobs load them
        from MLflow and pass them to the constructor; saved, the model carries them itself."""
        return {}

    @classmethod
    def component_families(cls) -> dict[str, str]:
        """The family each component must be, by constructor argument (checked when a job
        loads them: a frame predictor named as a generator's tokenizer is one line, not an
        AttributeError deep in the constructor)."""
        return {}


def check_patched_video(video: torch.Tensor, patch: tuple[int, int, int], channels: int,
                        what: str = "patch") -> None:
    """Refuse (ValueError, one line) a video (B, T, H, W, C) that `patch` (a V-BLT patch, a
    ViViT tubelet: `what`) does not tile with at least two time slices (one to predict from,
    one to predict), or that has other than `channels` channels."""
    _, t, h, w, c = video.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw or t < 2 * pt:
        raise ValueError(f"video (T, H, W) = ({t}, {h}, {w}) must be divisible by the {what} "
                         f"{tuple(patch)} with at least two time slices")
    if c != channels:
        raise ValueError(f"video has {c} channels, the model {channels}")


class FramePredictor(Model):
    """uint8 video in; `forward` returns logits (B, T - k, H, W, C, levels) over every pixel
    value of the frames after the first k = `context_frames`, frame t's logits depending only on
    frames before it. Decoding, entropy maps, metrics against copy-last-frame and the loss come
    with the family."""

    family = "frame_predictor"
    headline = ("psnr", "ssim")
    levels: ClassVar[int] = 256  # values a pixel byte takes

    @property
    @abc.abstractmethod
    def context_frames(self) -> int:
        """Frames at the start that are given, never predicted."""

    @property
    @abc.abstractmethod
    def frames_per_step(self) -> int:
        """Frames one forward step predicts together."""

    def next_step_logits(self, video: torch.Tensor) -> torch.Tensor:
        """Logits (B, frames_per_step, H, W, C, levels) of the video's last step only, as
        `forward(video)[:, -frames_per_step:]` gives them (its values never matter): what
        serving and rollouts need. A model may override it to skip work on earlier steps."""
        return self(video)[:, -self.frames_per_step:]

    def loss(self, video: torch.Tensor, own_inputs: float = 0.0
             ) -> tuple[torch.Tensor, Metrics]:
        """Mean cross-entropy (nats per pixel byte) of the predicted distributions of the true
        frames. With `own_inputs` > 0, that fraction of the input's predicted frames are first
        replaced by the model's own predictions of them (`with_own_predictions`)."""
        inputs = self.with_own_predictions(video, own_inputs) if own_inputs > 0 else video
        return categorical_nll(self(inputs), video[:, self.context_frames:].long()), {}

    @torch.no_grad()
    def with_own_predictions(self, video: torch.Tensor, fraction: float) -> torch.Tensor:
        """`video` with a random `fraction` of its predicted frames (each clip's own draw)
        replaced by the model's decoded predictions of them, each made from the true frames
        before it: the inputs a rollout feeds back, to first order, at the cost of one forward
        pass without gradients (parallel scheduled sampling, Duckworth et al. 2019). Training on
        them teaches a model to predict the truth from its own imperfect frames, the drift that
        teacher forcing never shows."""
        k = self.context_frames
        own = self.decode(self(video)).to(video.dtype)  # (B, T - k, H, W, C)
        pick = torch.rand(video.shape[0], video.shape[1] - k, device=video.device) < fraction
        mixed = video.clone()
        mixed[:, k:] = torch.where(pick[:, :, None, None, None], own, video[:, k:])
        return mixed

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        if getattr(cfg, "decode", DEFAULT_DECODE) not in DECODES:
            raise ConfigError(f"decode={cfg.decode!r} is unknown; accepted: {', '.join(DECODES)}")

    def decode(self, logits: torch.Tensor, how: str | None = None) -> torch.Tensor:
        """One uint8 value per pixel from its distribution (`distribution.decode_bytes`); `how`
        defaults to the model's own `cfg.decode` (chosen on val by jobs.train)."""
        return decode_bytes(logits, how or getattr(self.cfg, "decode", DEFAULT_DECODE))

    def decode_with_entropy(self, logits: torch.Tensor, how: str | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(`decode(logits, how)`, each pixel's entropy in bits as float32) from one softmax
        per pixel (`distribution.decode_with_entropy`): what a prediction step returns."""
        return decode_with_entropy(logits, how or getattr(self.cfg, "decode", DEFAULT_DECODE))

    def evaluate(self, videos: np.ndarray, batch_size: int = 8) -> Metrics:
        from framecast.predict import evaluate, flat_summary

        return flat_summary(evaluate(self, videos, batch_size=batch_size), prefix="")

    def quality(self, videos: np.ndarray, batch_size: int = 8) -> float:
        """Mean PSNR (dB) of the decoded predictions."""
        from framecast.predict import predict

        pred, _, _ = predict(self, videos, batch_size=batch_size)
        return float(metrics.psnr_per_frame(pred, videos[:, self.context_frames:]).mean())

    def figure(self, video: np.ndarray, title: str = "") -> bytes | None:
        """Truth / prediction / entropy per predicted frame (the V-BLT paper's figures 7-8)."""
        from framecast import viz
        from framecast.predict import predict

        k = self.context_frames
        pred, entropy, _ = predict(self, video[None])
        return viz.prediction_figure(video[k:], pred[0], entropy[0], title=title)


class Tokenizer(Model):
    """uint8 video (B, T, H, W, C) <-> integer tokens (B, T', H', W') in [0, codebook_size)."""

    family = "tokenizer"
    #: True when each frame's tokens depend on that frame alone and decode back to it alone
    #: (T' = T, no temporal mixing): a generator then decodes only the frames it made.
    frame_independent: bool = False

    @property
    @abc.abstractmethod
    def codebook_size(self) -> int:
        """How many distinct tokens there are."""

    @abc.abstractmethod
    def grid(self, frame_shape: tuple[int, int, int, int]) -> tuple[int, int, int]:
        """The token grid (T', H', W') of a video of frame_shape (T, H, W, C)."""

    @abc.abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, H, W, C) -> int64 tokens (B, T', H', W')."""

    @abc.abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 tokens (B, T', H', W') -> uint8 video (B, T, H, W, C)."""


class TokenGenerator(Model):
    """Token grid in, logits over the tokenizer's codebook out: `forward(tokens (B, T', H', W'))
    -> logits (B, N, codebook_size)` for the N tokens after the condition, in raster order;
    `generate` continues a video block by block with a cache. Holds the tokenizer it was
    trained with (`self.tokenizer`, a component)."""

    family = "token_generator"
    tokenizer: Tokenizer

    def components(self) -> dict[str, Model]:
        return {"tokenizer": self.tokenizer}

    @classmethod
    def component_refs(cls, cfg: Any) -> dict[str, str]:
        """The tokenizer named by the config's `tokenizer` field."""
        return {"tokenizer": cfg.tokenizer}

    @classmethod
    def component_families(cls) -> dict[str, str]:
        return {"tokenizer": Tokenizer.family}

    @abc.abstractmethod
    def generate(self, context: torch.Tensor, future_frames: int, *, temperature: Any = 1.0,
                 top_k: Any = 0, seed: Any = 0) -> torch.Tensor:
        """uint8 context frames (B, T, H, W, C) -> uint8 (B, future_frames, H, W, C).
        temperature (0: greedy), top_k (0: all) and seed: one value, or one per row; a row's
        frames depend on its own settings only (the same seed, the same frames)."""

    @abc.abstractmethod
    def forward_steps(self, frame_shape: tuple[int, int, int, int], context_frames: int) -> int:
        """Forward passes `generate` makes to continue `context_frames` frames to a clip of
        frame_shape (T, H, W, C): the cost NBP cuts."""

    def min_context_frames(self, frame_shape: tuple[int, int, int, int]) -> int:
        """The fewest video frames `generate` can start from on clips of frame_shape (those that
        hold the model's condition); default one."""
        return 1

    def context_step(self, frame_shape: tuple[int, int, int, int]) -> int:
        """Context frames beyond the fewest come in multiples of this (whole blocks); default
        one."""
        return 1

    def quality(self, videos: np.ndarray, batch_size: int = 8) -> float:
        """Mean PSNR (dB) against the truth of greedy continuations from the fewest context
        frames: what quantization must not lose (token cross-entropy alone does not show how
        errors compound over the blocks of a generation)."""
        from framecast.generation import continue_clips

        k = self.min_context_frames(tuple(videos.shape[1:]))
        generated, _ = continue_clips(self, videos, k, batch_size=batch_size)
        return float(metrics.psnr_per_frame(generated, videos[:, k:]).mean())
