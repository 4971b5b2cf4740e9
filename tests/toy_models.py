"""A tokenizer for tests of token generators, shared by the test files: the mean of each 2x2
patch quantized to `levels` values, frame by frame (importing this module registers it as
`toy-patches`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from framecast.models import registry
from framecast.models.contract import Tokenizer


@dataclass(frozen=True)
class PatchTokenizerConfig:
    levels: int = 4
    patch: int = 2


class PatchTokenizer(Tokenizer):
    config_class = PatchTokenizerConfig

    def __init__(self, cfg: PatchTokenizerConfig) -> None:
        super().__init__(cfg)
        self.offset = nn.Parameter(torch.zeros(()))  # a tensor that must travel with the unit

    @property
    def codebook_size(self) -> int:
        return self.cfg.levels

    def grid(self, frame_shape):
        t, h, w, _ = frame_shape
        return t, h // self.cfg.patch, w // self.cfg.patch

    def encode(self, video):
        p, width = self.cfg.patch, 256 // self.cfg.levels
        mean = F.avg_pool2d(video.float().mean(-1).flatten(0, 1)[:, None], p)[:, 0]
        tokens = ((mean + self.offset) // width).clamp(0, self.cfg.levels - 1).long()
        return tokens.view(video.shape[0], video.shape[1], *tokens.shape[1:])

    def decode(self, tokens):
        width = 256 // self.cfg.levels
        values = (tokens * width + width // 2).to(torch.uint8)
        p = self.cfg.patch
        return values.repeat_interleave(p, -2).repeat_interleave(p, -1)[..., None]

    def loss(self, video):
        return self.offset.square(), {}

    def evaluate(self, videos, batch_size=8):
        return {"loss": 0.0}


registry.register_model("toy-patches", {"tiny": {}, "fine": {"levels": 16},
                                         "coarse": {"patch": 4}})(PatchTokenizer)
